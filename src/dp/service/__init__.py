"""The service: pipelines started by cron, events and HTTP; the HTTP API; observability."""

from dp.service.lifecycle import LifecycleEvents, Metrics
from dp.service.runtime import PipelineBusyError, Service, ServiceUnavailableError

__all__ = ["LifecycleEvents", "Metrics", "PipelineBusyError", "Service", "ServiceUnavailableError"]
