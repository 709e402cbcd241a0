"""The Intel VT-d driver side of the core (``drivers/iommu/intel/``).

``iommu.py`` probe/release and per-unit state, ``domain.py`` domains and their DIDs,
``cache.py`` cache tags and flushes, ``pasid.py`` PASID entries, ``prq.py`` the page
request queue thread and drain, ``dmar.py`` the invalidation queue client.
"""
