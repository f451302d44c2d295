"""dp's scheduler: cron, event, API and manual triggers that publish events.

broker = InMemoryBroker()
scheduler = Scheduler(InMemoryPublisher(broker))
nightly = create_cron_trigger("30 2 * * *", make_event, timezone="Europe/Berlin")
await scheduler.register_trigger("nightly", nightly, "etl.nightly")
await scheduler.start()
"""

from dp.scheduler.clock import Clock, ManualClock, SystemClock
from dp.scheduler.cron import CronSchedule
from dp.scheduler.errors import (
    CircuitOpenError,
    DuplicateTriggerError,
    InvalidCronError,
    InvalidTimezoneError,
    InvalidTriggerError,
    SchedulerError,
    ScheduleStateError,
    TriggerNotFoundError,
)
from dp.scheduler.health import (
    CircuitState,
    MetricSample,
    SchedulerHealth,
    TriggerHealth,
    TriggerInfo,
    TriggerStats,
)
from dp.scheduler.scheduler import Scheduler
from dp.scheduler.state import FileScheduleState, MemoryScheduleState, ScheduleState
from dp.scheduler.triggers import (
    APITrigger,
    CronEventFactory,
    CronTrigger,
    EventFilter,
    EventTrigger,
    ManualTrigger,
    Misfire,
    PayloadEventFactory,
    SourceEventFactory,
    Trigger,
    TriggerKind,
    create_api_trigger,
    create_cron_trigger,
    create_event_trigger,
    create_manual_trigger,
)

__all__ = [
    "APITrigger",
    "CircuitOpenError",
    "CircuitState",
    "Clock",
    "CronEventFactory",
    "CronSchedule",
    "CronTrigger",
    "DuplicateTriggerError",
    "EventFilter",
    "EventTrigger",
    "FileScheduleState",
    "InvalidCronError",
    "InvalidTimezoneError",
    "InvalidTriggerError",
    "ManualClock",
    "ManualTrigger",
    "MemoryScheduleState",
    "MetricSample",
    "Misfire",
    "PayloadEventFactory",
    "ScheduleState",
    "ScheduleStateError",
    "Scheduler",
    "SchedulerError",
    "SchedulerHealth",
    "SourceEventFactory",
    "SystemClock",
    "Trigger",
    "TriggerHealth",
    "TriggerInfo",
    "TriggerKind",
    "TriggerNotFoundError",
    "TriggerStats",
    "create_api_trigger",
    "create_cron_trigger",
    "create_event_trigger",
    "create_manual_trigger",
]
