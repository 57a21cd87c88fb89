import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


onstart:
    # Create/migrate the MLflow database once, before parallel jobs log into it.
    from bafusion import tracking

    if tracking.enabled():
        tracking.ensure_db()


def csv(values):
    return ",".join(str(v) for v in values or [])
