"""Adapters between graddoctor's probe and training frameworks (each imports its framework lazily).

- graddoctor.integrations.lightning.GradDoctorCallback: a Lightning Trainer callback.
"""
