"""iopfd wire protocol v2, the whole contract: frames, the op table, argument and
result models, errno names, the fault fd's records, and the sans-IO server and client
sessions. No I/O."""

from iopfd.protocol.errors import ERRNO_NAMES, RequestError
from iopfd.protocol.frames import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    ProtocolViolation,
    decode_body,
    encode_frame,
)
from iopfd.protocol.models import (
    ADMIN_OPS,
    OP_MODELS,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    TRACE_TOPICS,
    Args,
    validate_args,
    validate_request,
)
from iopfd.protocol.ops import OPS, OpSpec, Result
from iopfd.protocol.session import (
    ClientSession,
    Event,
    Rejected,
    Reply,
    Request,
    ServerSession,
    parse_result,
)

__all__ = [
    "ADMIN_OPS",
    "DEFAULT_MAX_FRAME",
    "ERRNO_NAMES",
    "OPS",
    "OP_MODELS",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "TRACE_TOPICS",
    "Args",
    "ClientSession",
    "Event",
    "FrameDecoder",
    "OpSpec",
    "ProtocolViolation",
    "Rejected",
    "Reply",
    "Request",
    "RequestError",
    "Result",
    "ServerSession",
    "decode_body",
    "encode_frame",
    "parse_result",
    "validate_args",
    "validate_request",
]
