import ipaddress

import pytest
from feedbackloop.localdev.podruntime_net import SLOT_COUNT, SUPERNET, IPAllocator, IPExhausted, Slot


def test_slots_split_the_pod_supernet_without_overlap():
    networks = [Slot(index).network for index in range(SLOT_COUNT)]
    assert all(network.subnet_of(ipaddress.ip_network("10.244.0.0/24")) for network in networks)
    assert all(not a.overlaps(b) for i, a in enumerate(networks) for b in networks[i + 1:])
    assert SUPERNET == ipaddress.ip_network("10.244.0.0/24")
    assert Slot(0).gateway == "10.244.0.1" and Slot(0).bridge == "mfl0"


def test_pod_interface_names_fit_the_kernel_limit_and_carry_the_slot_prefix():
    slot = Slot(3)
    netns, veth, peer = slot.pod_names("0d9f4c1e-aaaa-bbbb-cccc-1234567890ab")
    assert netns.startswith(slot.netns_prefix) and veth.startswith(slot.veth_prefix)
    assert len(veth) <= 15 and len(peer) <= 15


def test_allocation_is_idempotent_per_pod_and_never_hands_out_an_ip_twice():
    allocator = IPAllocator(ipaddress.ip_network("10.244.0.0/29"), reserved={"10.244.0.1"})
    first = allocator.allocate("a")
    assert allocator.allocate("a") == first
    ips = {first} | {allocator.allocate(key) for key in "bcde"}
    assert len(ips) == 5 and "10.244.0.1" not in ips
    with pytest.raises(IPExhausted):
        allocator.allocate("f")


def test_a_freed_ip_is_reused_last():
    allocator = IPAllocator(ipaddress.ip_network("10.244.0.0/29"), reserved={"10.244.0.1"})
    first = allocator.allocate("a")
    allocator.release("a")
    assert allocator.allocate("b") != first


def test_stale_ips_in_the_api_are_avoided_after_a_restart():
    allocator = IPAllocator(ipaddress.ip_network("10.244.0.0/28"), reserved={"10.244.0.1"})
    allocator.avoid({"10.244.0.2", "10.244.0.3"})
    assert allocator.allocate("a") == "10.244.0.4"
