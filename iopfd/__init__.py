"""iopfd: an iommufd-style I/O page fault delivery daemon over an emulated VT-d IOMMU."""

__version__ = "0.1.0"
