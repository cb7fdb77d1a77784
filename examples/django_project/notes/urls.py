from django.urls import path

from . import views

urlpatterns = [
    path('', views.notes, name='notes'),
    path('jobs/<str:job_id>/', views.job, name='job'),
]
