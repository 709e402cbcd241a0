"""The public names of each package, pinned: a change to them is a change to the API
and shows up here first (as trio's ``test_exports.py`` does)."""

from __future__ import annotations

import importlib

import pytest

PUBLIC: dict[str, frozenset[str]] = {
    "hwmodel": frozenset({
        "CC_G_DEVICE", "CC_G_DOMAIN", "CC_G_GLOBAL", "ContextCacheInvDescriptor",
        "ContextEntry", "DESC_SIZE", "DevTlbInvDescriptor", "DmaStatus", "DmaTransfer",
        "FaultRecord", "FunctionSpec", "IOTLB_G_DSI", "IOTLB_G_GLOBAL", "IOTLB_G_PSI",
        "InvDescriptor", "InvWaitDescriptor", "InvalidDescriptorError", "InvalidationQueue",
        "IommuSpec", "IommuUnit", "IotlbInvDescriptor", "Machine", "PAGE_SHIFT", "PAGE_SIZE",
        "PC_G_DOMAIN", "PC_G_GLOBAL", "PC_G_PASID", "PIOTLB_G_PASID", "PIOTLB_G_PSI",
        "PRGI_COUNT", "PRS_PPR", "PRS_PRO", "PageGroupResponseDescriptor",
        "PageRequestDescriptor", "PageRequestGroup", "PageRequestQueue", "PageTable",
        "PasidCacheInvDescriptor", "PasidDevTlbInvDescriptor", "PasidEntry",
        "PasidIotlbInvDescriptor", "PciError", "PciFunction", "Perm", "Pgtt", "PriCapability",
        "PriError", "RESP_FAILURE", "RESP_INVALID", "RESP_SUCCESS", "RID_PASID", "Rid",
        "TopologySpec", "Translation", "decode_inv_descriptor", "default_topology",
        "dev_tlb_decode_range", "dev_tlb_encode_range", "generated_topology", "load_topology",
        "perm_allows", "perm_of", "topology_from_dict",
    }),
    "iopfd.core": frozenset({
        "Context", "Core", "CoreError", "CoreEvent", "CoreLimits", "DEFAULT_KERNEL",
        "DEFAULT_UNPLUG_GRACE_NS", "DeviceRequest", "DmaDone", "Emulation", "FaultDelivered",
        "FlushStats", "KernelProfile", "PROFILES", "STATUS_COUNTERS", "TRACE_TOPICS", "Trace",
        "UnplugDone", "kernel_profile",
    }),
    "iopfd.protocol": frozenset({
        "ADMIN_OPS", "Args", "ClientSession", "DEFAULT_MAX_FRAME", "ERRNO_NAMES", "Event",
        "FrameDecoder", "OPS", "OP_MODELS", "OpSpec", "PROTOCOL_VERSION", "ProtocolViolation",
        "Rejected", "Reply", "Request", "RequestError", "Result", "SUPPORTED_VERSIONS",
        "ServerSession", "TRACE_TOPICS", "decode_body", "encode_frame", "parse_result",
        "validate_args", "validate_request",
    }),
    "clients": frozenset({
        "Busy", "Call", "Calls", "ClientStats", "ConnectionLost", "DEFAULT_SOCKET", "Device",
        "DeviceRequest", "DeviceRequestStream", "DmaResult", "DmaStatus", "EventGap",
        "FaultGroup", "FaultQueue", "FaultRecord", "HelloInfo", "InvalidArgument",
        "IopfClient", "IopfError", "NoDevice", "NoSpace", "NoSuchObject", "NotPermitted",
        "NotSupported", "PAGE_SIZE", "PageResponse", "PendingCall", "PendingGroup", "Perm",
        "ProtocolViolation", "ResponseCode", "Status", "TraceRecord", "TraceStream",
        "VersionMismatch", "resolve_socket_path",
    }),
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_the_public_names_are_the_pinned_ones_and_all_exist(name: str) -> None:
    module = importlib.import_module(name)
    assert set(module.__all__) == PUBLIC[name]
    assert len(module.__all__) == len(set(module.__all__))
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []
