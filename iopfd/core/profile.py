"""Kernel profiles: the behaviour of one LTS kernel where 6.12 and 6.18 differ.

A VMM ships against both, so iopfd can play either (``iopfd --kernel 6.12|6.18``).
Each switch names the kernel change behind it; docs/core.md has the full table.
Fixes the kernel received after 6.18 (replace answering the *old* HWPT's groups,
exactly-once group ownership, the fault fd's copy-fault return values) are on in both
profiles: iopfd never emulates a use-after-free, a lost or a stranded group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class KernelProfile:
    name: str
    #: PRI (and the context entry's PRE) on from probe for every PRI-capable function,
    #: with PASID and ATS ("iommu/vt-d: Move PRI enablement in probe path", v6.15):
    #: ``intel_iommu_enable_iopf`` only adds the device to the iopf queue. Off (v6.12):
    #: ``iommufd_fault_iopf_enable`` -> ``iommu_dev_enable_feature(IOMMU_DEV_FEAT_IOPF)``
    #: resets and enables PRI and sets PRE with the first fault-capable attachment and
    #: turns both off with the last.
    pri_at_probe: bool
    #: PASID attach through VFIO (``VFIO_DEVICE_ATTACH_PASID``) and
    #: ``IOMMU_HWPT_ALLOC_PASID``, with ``iommufd_hwpt_pasid_compat`` enforcing it (Yi
    #: Liu's PASID series, v6.15: "iommufd: Allow allocating PASID-compatible domain").
    #: Off (v6.12): ``vfio_df_ioctl_attach_pt`` refuses any flag (``EINVAL``) and the
    #: ``pasid`` HWPT flag is unknown (``EOPNOTSUPP``).
    pasid_attach: bool
    #: A paging HWPT (``pt_id`` an IOAS) may be fault-capable ("iommu: Enable user space
    #: IOPFs in non-PASID and non-svm cases", v6.13; "iommufd: Deal with
    #: IOMMU_HWPT_FAULT_ID_VALID in iommufd core" 11534b4de2a1, v6.14), though not
    #: together with NEST_PARENT. Off (v6.12): ``iommufd_hwpt_paging_alloc``'s
    #: valid_flags lack FAULT_ID_VALID (``EOPNOTSUPP``); only nested HWPTs can be.
    paging_fault_hwpt: bool
    #: The VF rule for fault-capable HWPTs refuses only a VF whose PF supports PRI
    #: (``iommufd_hwpt_compatible_device``, v6.13+). Off (v6.12):
    #: ``iommufd_fault_iopf_enable`` refuses every VF (``is_virtfn``).
    vf_rule_pri_only: bool


PROFILES: Final[dict[str, KernelProfile]] = {
    "6.12": KernelProfile(
        "6.12",
        pri_at_probe=False,
        pasid_attach=False,
        paging_fault_hwpt=False,
        vf_rule_pri_only=False,
    ),
    "6.18": KernelProfile(
        "6.18", pri_at_probe=True, pasid_attach=True, paging_fault_hwpt=True, vf_rule_pri_only=True
    ),
}
DEFAULT_KERNEL: Final = "6.18"


def kernel_profile(name: str) -> KernelProfile:
    """The profile called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown kernel profile {name!r}: choose one of {', '.join(sorted(PROFILES))}"
        ) from None


__all__ = ["DEFAULT_KERNEL", "PROFILES", "KernelProfile", "kernel_profile"]
