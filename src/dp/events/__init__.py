"""dp's event system: one event schema, topic patterns, ports, and the embedded adapters.

`await InMemoryPublisher(broker).publish(topic, event)` on one side,
`async for event in InMemoryConsumer(broker).consume("sales.*.created")` on the other.
"""

from dp.events.event import EventBase, new_event_id
from dp.events.groups import InMemoryDurableSubscription
from dp.events.memory import (
    InMemoryBroker,
    InMemoryConsumer,
    InMemoryPublisher,
    InMemorySubscription,
    Overflow,
)
from dp.events.ports import (
    Broker,
    BrokerConsumer,
    BrokerStats,
    Consumer,
    DeadLetter,
    DurableSubscription,
    Publisher,
    Queue,
    QueueEmptyError,
    StartFrom,
    Subscription,
)
from dp.events.queues import InMemoryQueue, MultiprocessQueue
from dp.events.topics import (
    MAX_TOPIC_LENGTH,
    TopicMatcher,
    compile_pattern,
    matches,
    validate_pattern,
    validate_topic,
)

__all__ = [
    "MAX_TOPIC_LENGTH",
    "Broker",
    "BrokerConsumer",
    "BrokerStats",
    "Consumer",
    "DeadLetter",
    "DurableSubscription",
    "EventBase",
    "InMemoryBroker",
    "InMemoryConsumer",
    "InMemoryDurableSubscription",
    "InMemoryPublisher",
    "InMemoryQueue",
    "InMemorySubscription",
    "MultiprocessQueue",
    "Overflow",
    "Publisher",
    "Queue",
    "QueueEmptyError",
    "StartFrom",
    "Subscription",
    "TopicMatcher",
    "compile_pattern",
    "matches",
    "new_event_id",
    "validate_pattern",
    "validate_topic",
]
