"""Budgets per uid and for the whole daemon: objects, mapped pages, domain IDs, and
attachments (each (device, PASID) a HWPT is attached at).

The kernel charges a process's pinned pages to its ``RLIMIT_MEMLOCK`` (``user->locked_vm``
in ``iopt_pages``) and IDs to the user's cgroup; iopfd has one process for every tenant,
so it charges each context's resources to the uid that opened it (``SO_PEERCRED``), and
all of them to a global total. One uid over its budget gets ``ENOSPC``; what it holds is
never taken back from another uid, so another uid's work is refused only by the global
totals, which the per-uid budgets keep far from one tenant's reach.

Every charge goes through ``Budgets``: the one place that knows the counts.
"""

from __future__ import annotations

from collections import Counter

from iopfd.core.errors import ENOSPC, CoreError, CoreLimits


class UidAccount:
    """What one uid holds across all its contexts."""

    __slots__ = ("attachments", "budgets", "contexts", "dids", "mapped_pages", "objects", "uid")

    def __init__(self, budgets: Budgets, uid: int | None) -> None:
        self.budgets = budgets
        self.uid = uid
        self.contexts = 0
        self.objects = 0
        self.mapped_pages = 0
        self.attachments = 0
        #: IOMMU unit name -> domain IDs this uid's domains hold on it.
        self.dids: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<UidAccount uid={self.uid} objects={self.objects} pages={self.mapped_pages}>"

    # ------------------------------------------------------------------ objects
    def check_object(self) -> None:
        """``ENOSPC`` when one more object would exceed the uid's or the global budget."""
        b = self.budgets
        limits = b.limits
        if self.objects >= limits.max_objects_per_uid:
            b.refused["objects_uid"] += 1
            raise CoreError(ENOSPC, f"uid {self.uid} holds max_objects_per_uid objects")
        if b.objects >= limits.max_objects_total:
            b.refused["objects_total"] += 1
            raise CoreError(ENOSPC, "the daemon holds max_objects_total objects")

    def charge_object(self) -> None:
        self.check_object()
        self.objects += 1
        self.budgets.objects += 1

    def release_object(self) -> None:
        self.objects -= 1
        self.budgets.objects -= 1

    # ------------------------------------------------------------------ mapped pages
    def charge_pages(self, npages: int) -> None:
        b = self.budgets
        limits = b.limits
        if self.mapped_pages + npages > limits.max_mapped_pages_per_uid:
            b.refused["mapped_pages_uid"] += 1
            raise CoreError(
                ENOSPC,
                f"mapping {npages} more pages would exceed max_mapped_pages_per_uid "
                f"({limits.max_mapped_pages_per_uid}) for uid {self.uid}",
            )
        if b.mapped_pages + npages > limits.max_mapped_pages_total:
            b.refused["mapped_pages_total"] += 1
            raise CoreError(ENOSPC, "the daemon holds max_mapped_pages_total pages")
        self.mapped_pages += npages
        b.mapped_pages += npages

    def release_pages(self, npages: int) -> None:
        self.mapped_pages -= npages
        self.budgets.mapped_pages -= npages

    # ------------------------------------------------------------------ attachments
    def charge_attachment(self) -> None:
        """One more (device, PASID) attached: ``ENOSPC`` past ``max_attachments_per_uid``
        or ``max_attachments_total``. An attachment is about 0.5-1 KiB of the daemon
        (handle, PASID entry, tags) and a device takes 2^20 - 1 PASIDs: without a
        budget one tenant could grow the daemon by a gigabyte per device."""
        b = self.budgets
        limits = b.limits
        if self.attachments >= limits.max_attachments_per_uid:
            b.refused["attachments_uid"] += 1
            raise CoreError(
                ENOSPC,
                f"uid {self.uid} holds max_attachments_per_uid "
                f"({limits.max_attachments_per_uid}) attachments",
            )
        if b.attachments >= limits.max_attachments_total:
            b.refused["attachments_total"] += 1
            raise CoreError(ENOSPC, "the daemon holds max_attachments_total attachments")
        self.attachments += 1
        b.attachments += 1

    def release_attachment(self) -> None:
        self.attachments -= 1
        self.budgets.attachments -= 1

    # ------------------------------------------------------------------ domain IDs
    def charge_did(self, unit: str) -> None:
        """One more domain ID on ``unit`` (``domain_attach_iommu``): ``ENOSPC`` past
        ``max_dids_per_uid``, so one tenant cannot exhaust a unit's 16-bit DID space."""
        b = self.budgets
        limit = b.limits.max_dids_per_uid
        if self.dids[unit] >= limit:
            b.refused["dids_uid"] += 1
            raise CoreError(ENOSPC, f"uid {self.uid} holds max_dids_per_uid ({limit}) on {unit}")
        self.dids[unit] += 1

    def release_did(self, unit: str) -> None:
        self.dids[unit] -= 1
        if not self.dids[unit]:
            del self.dids[unit]


class Budgets:
    """Every uid's account and the global totals (``CoreServices.budgets``)."""

    def __init__(self, limits: CoreLimits) -> None:
        self.limits = limits
        self.accounts: dict[int | None, UidAccount] = {}
        self.objects = 0
        self.mapped_pages = 0
        self.attachments = 0
        #: Charges refused, by budget (``status``: ``budget_refused_*``).
        self.refused: Counter[str] = Counter()

    def open(self, uid: int | None) -> UidAccount:
        """The uid's account, for one more context of it."""
        acct = self.accounts.get(uid)
        if acct is None:
            acct = self.accounts[uid] = UidAccount(self, uid)
        acct.contexts += 1
        return acct

    def close(self, acct: UidAccount) -> None:
        """One context of the uid is gone; an idle account is forgotten."""
        acct.contexts -= 1
        if not (
            acct.contexts or acct.objects or acct.mapped_pages or acct.attachments or acct.dids
        ):
            self.accounts.pop(acct.uid, None)

    def counters(self) -> dict[str, int]:
        """The ``budget_*`` counters of ``status``."""
        out = {
            "budget_objects": self.objects,
            "budget_mapped_pages": self.mapped_pages,
            "budget_attachments": self.attachments,
            "budget_uids": len(self.accounts),
            "budget_max_objects_uid": max((a.objects for a in self.accounts.values()), default=0),
            "budget_max_mapped_pages_uid": max(
                (a.mapped_pages for a in self.accounts.values()), default=0
            ),
            "budget_max_attachments_uid": max(
                (a.attachments for a in self.accounts.values()), default=0
            ),
            "budget_max_dids_uid": max(
                (n for a in self.accounts.values() for n in a.dids.values()), default=0
            ),
        }
        for key in (
            "objects_uid",
            "objects_total",
            "mapped_pages_uid",
            "mapped_pages_total",
            "attachments_uid",
            "attachments_total",
        ):
            out[f"budget_refused_{key}"] = self.refused[key]
        out["budget_refused_dids_uid"] = self.refused["dids_uid"]
        return out

    def usage(self) -> list[dict[str, object]]:
        """Per-uid rows (the admin ``status`` result's ``budgets``)."""
        return [
            {
                "uid": a.uid,
                "contexts": a.contexts,
                "objects": a.objects,
                "mapped_pages": a.mapped_pages,
                "attachments": a.attachments,
                "dids": dict(sorted(a.dids.items())),
            }
            for a in sorted(self.accounts.values(), key=lambda a: (a.uid is None, a.uid or 0))
        ]


__all__ = ["Budgets", "UidAccount"]
