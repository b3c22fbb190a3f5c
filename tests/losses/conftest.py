from hypothesis import HealthCheck, settings

settings.register_profile(
    "detlosses",
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("detlosses")
