"""The daemon benches' own arithmetic: what they call the minimum, and how they answer."""

from __future__ import annotations

import tomllib

from bench.faults import INV_LARGE, INV_SMALL, _ranges, invalidation_minimum, summarize_py_spy
from bench.wire import generated_functions, topology_toml
from hwmodel.topology import generated_topology, topology_from_dict


def test_invalidation_minimum_is_one_per_unit_did_one_per_ats_pasid_one_wait_per_unit() -> None:
    # Parent on dmar0 and dmar1, C1 on dmar0 and dmar1, C2 on dmar0 and dmar2: 6 (unit, DID).
    # ATS attachments: parent via 10:00.0 and 20:00.0; C1 x3; C2 x2 (10:01.0/2, 30:00.0).
    assert invalidation_minimum(INV_SMALL) == {"iotlb": 6, "dev_tlb": 7, "wait": 3}


def test_large_invalidation_scenario_needs_more_than_one_linux_batch_per_unit() -> None:
    # Per unit: parent + 4 children = 5 DIDs; 4 ATS RIDs of the parent + 4 ATS devices x 4
    # children = 20 device-TLB entries; 25 descriptors, more than qi_batch's 16.
    assert invalidation_minimum(INV_LARGE) == {"iotlb": 10, "dev_tlb": 40, "wait": 2}


def test_invalidation_scenario_puts_one_nested_domain_on_two_devices_of_one_unit() -> None:
    # Two attachments of C1 behind dmar0 share one (unit, DID): one IOTLB invalidation
    # covers both, so an implementation that walks per device issues more than the minimum.
    unit = {f.rid: f.iommu for f in INV_SMALL.functions}
    c1_on_dmar0 = {
        rid for hwpt, rid, _ in INV_SMALL.attach if hwpt == "C1" and unit[rid] == "dmar0"
    }
    assert len(c1_on_dmar0) == 2


def test_generated_topology_file_matches_hwmodel_generated_topology() -> None:
    names = [f"dmar{i}" for i in range(3)]
    text = topology_toml(generated_functions(600, 3), names)
    assert topology_from_dict(tomllib.loads(text)) == generated_topology(600, 3)


def test_answers_map_contiguous_faulting_pages_as_one_range() -> None:
    pages = [0x5000, 0x3000, 0x4000, 0x9000, 0x4000]
    assert _ranges(pages) == [(0x3000, 0x3000), (0x9000, 0x1000)]


def test_a_profile_charges_each_sample_to_the_innermost_project_package() -> None:
    raw = "\n".join(
        [
            # the standard library under the core counts for the core
            "run (trio/_core/_run.py:1);service (iopfd/core/core.py:2);heappop (heapq.py:3) 6",
            "run (trio/_core/_run.py:1);_admit (iopfd/protocol/session.py:4) 3",
            "run (trio/_core/_run.py:1) 1",
        ]
    )
    text = summarize_py_spy(raw)
    shares = text.split("self, by package:")[1].split("self:")[0].split()
    assert shares == ["60.0%", "iopfd.core", "30.0%", "iopfd.protocol", "10.0%", "trio"]
