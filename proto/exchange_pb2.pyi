from seraphim.proto import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class HelloRequest(_message.Message):
    __slots__ = ("session_id", "party", "peer", "public_key", "fingerprint", "exchange_key", "incarnation")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_KEY_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    party: str
    peer: str
    public_key: bytes
    fingerprint: str
    exchange_key: bytes
    incarnation: str
    def __init__(self, session_id: _Optional[str] = ..., party: _Optional[str] = ..., peer: _Optional[str] = ..., public_key: _Optional[bytes] = ..., fingerprint: _Optional[str] = ..., exchange_key: _Optional[bytes] = ..., incarnation: _Optional[str] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("party", "public_key", "fingerprint", "exchange_key", "confirm", "incarnation")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_KEY_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    party: str
    public_key: bytes
    fingerprint: str
    exchange_key: bytes
    confirm: bytes
    incarnation: str
    def __init__(self, party: _Optional[str] = ..., public_key: _Optional[bytes] = ..., fingerprint: _Optional[str] = ..., exchange_key: _Optional[bytes] = ..., confirm: _Optional[bytes] = ..., incarnation: _Optional[str] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("session_id", "sender", "receiver", "tag", "seq", "payload_size", "payload", "mac")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    sender: str
    receiver: str
    tag: str
    seq: int
    payload_size: int
    payload: bytes
    mac: bytes
    def __init__(self, session_id: _Optional[str] = ..., sender: _Optional[str] = ..., receiver: _Optional[str] = ..., tag: _Optional[str] = ..., seq: _Optional[int] = ..., payload_size: _Optional[int] = ..., payload: _Optional[bytes] = ..., mac: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("session_id", "party")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    party: str
    def __init__(self, session_id: _Optional[str] = ..., party: _Optional[str] = ...) -> None: ...

class PingReply(_message.Message):
    __slots__ = ("party", "session_id", "incarnation")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    party: str
    session_id: str
    incarnation: str
    def __init__(self, party: _Optional[str] = ..., session_id: _Optional[str] = ..., incarnation: _Optional[str] = ...) -> None: ...
