"""The manual's pages, as the tests read them: README.md (the front page)
and the guide in docs/ (built into a site by mkdocs.yml).

- ``PAGES``: every page, the README first.
- ``section(title, page=None)``: the text under the one heading ``title``.
- ``python_blocks(page)``: its ```python blocks.
- ``links(page)``: its Markdown links and images.
- ``anchors(page)``: the anchors its headings get on a code host (GitHub's
  rule) and, for a page of the guide, in the mkdocs site (Python-Markdown's
  ``toc``): a link must find its anchor in both.
"""

import re
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / 'README.md'
DOCS = ROOT / 'docs'
PAGES = [README] + sorted(DOCS.glob('*.md'))

FENCE = re.compile(r'^```[^\n]*\n.*?^```', re.S | re.M)
PYTHON = re.compile(r'^```python\n(.*?)^```', re.S | re.M)
HEADING = re.compile(r'^(#{1,6}) (.+?)\s*$', re.M)
INLINE_CODE = re.compile(r'`[^`\n]*`')
LINK = re.compile(r'(!?)\[((?:[^\]\\]|\\.)*)\]\(([^)\s]+)\)')


def name(page):
    """``README.md``, ``docs/jobs.md``: how messages and test ids name a page."""
    return Path(page).relative_to(ROOT).as_posix()


def prose(text):
    """``text`` with its fenced blocks blanked out (offsets and lines kept)."""
    return FENCE.sub(lambda m: re.sub(r'[^\n]', ' ', m.group(0)), text)


def headings(page):
    """``(level, title, line)`` of each heading of ``page``."""
    text = prose(Path(page).read_text())
    return [(len(m.group(1)), m.group(2), text.count('\n', 0, m.start()) + 1)
            for m in HEADING.finditer(text)]


def section(title, page=None):
    """The text under the heading ``title`` (any level), up to the next
    heading of the same or a higher level, from the one page that has it
    (or from ``page``)."""
    found = [(p, level) for p in ([Path(page)] if page else PAGES)
             for level, text, _ in headings(p) if text == title]
    assert len(found) == 1, 'heading %r: %s' % (title, [name(p) for p, _ in found] or 'none')
    page, level = found[0]
    text = Path(page).read_text()
    start = re.search(r'^%s %s\s*$' % ('#' * level, re.escape(title)), text, re.M).start()
    end = re.compile(r'^#{1,%d} ' % level, re.M).search(prose(text), start + 1)
    return text[start:end.start() if end else len(text)]


def python_blocks(page):
    """``(line, code)`` of each ```python block of ``page``."""
    text = Path(page).read_text()
    return [(text.count('\n', 0, m.start()) + 1, m.group(1)) for m in PYTHON.finditer(text)]


def links(page):
    """``(line, is_image, target)`` of each Markdown link and image of
    ``page``, outside code."""
    text = prose(Path(page).read_text())
    text = INLINE_CODE.sub(lambda m: ' ' * len(m.group(0)), text)
    return [(text.count('\n', 0, m.start()) + 1, bool(m.group(1)), m.group(3))
            for m in LINK.finditer(text)]


def _text(title):
    """A heading's text as rendered: no code marks, emphasis or link targets."""
    title = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', title)
    return re.sub(r'[`*]', '', title)


def github_slug(title):
    """The anchor GitHub gives a heading (before numbering duplicates)."""
    return re.sub(r'[^\w\- ]', '', _text(title).strip().lower()).replace(' ', '-')


def mkdocs_slug(title):
    """The anchor Python-Markdown's toc (mkdocs) gives a heading."""
    value = unicodedata.normalize('NFKD', _text(title)).encode('ascii', 'ignore').decode()
    value = re.sub(r'[^\w\s-]', '', value).strip().lower()
    return re.sub(r'[-\s]+', '-', value)


def anchors(page):
    """The anchors of ``page``'s headings that every reader finds: GitHub's,
    and for a page of the guide those that are mkdocs' too."""
    titles = [title for _, title, _ in headings(page)]
    out = {github_slug(t) for t in titles}
    if Path(page).parent == DOCS:
        out &= {mkdocs_slug(t) for t in titles}
    return out
