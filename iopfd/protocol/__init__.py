"""iopfd wire protocol v2: frames, op argument models, errno names. No I/O."""

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

__all__ = [
    "ADMIN_OPS",
    "DEFAULT_MAX_FRAME",
    "ERRNO_NAMES",
    "OP_MODELS",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "TRACE_TOPICS",
    "Args",
    "FrameDecoder",
    "ProtocolViolation",
    "RequestError",
    "decode_body",
    "encode_frame",
    "validate_args",
    "validate_request",
]
