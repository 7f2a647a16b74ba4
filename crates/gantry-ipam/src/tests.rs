use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::*;

#[test]
fn cidrs_parse_and_normalise() {
    let n: Net = "10.32.7.9/12".parse().unwrap();
    assert_eq!(n.to_string(), "10.32.0.0/12");
    assert_eq!(n.size(), 1 << 20);
    for bad in ["10.32.0.0", "10.32.0.0/33", "10.32.0/12", "x/8", ""] {
        assert!(bad.parse::<Net>().is_err(), "{bad}");
    }
    assert!(Plan::new(n, 8).is_err(), "a block bigger than the CIDR");
    assert!(Plan::new(n, 31).is_err(), "a block without room for tasks");
}

#[test]
fn blocks_are_carved_in_order_and_never_twice() {
    let plan = Plan::new("10.32.0.0/22".parse().unwrap(), 24).unwrap();
    let mut used = BTreeSet::new();
    let mut got = Vec::new();
    while let Some(b) = plan.next_block(&used) {
        used.insert(b);
        got.push(b.to_string());
    }
    // The top sixteenth (10.32.3.192/26) is the virtual IPs': its block
    // is no node's.
    assert_eq!(got, ["10.32.0.0/24", "10.32.1.0/24", "10.32.2.0/24"]);
    assert_eq!(plan.vip_pool().to_string(), "10.32.3.192/26");
    used.remove(&"10.32.1.0/24".parse().unwrap());
    assert_eq!(plan.next_block(&used).unwrap().to_string(), "10.32.1.0/24");
}

#[test]
fn virtual_ips_come_from_the_top_of_the_plan_and_never_twice() {
    let plan = Plan::default_plan();
    let pool = plan.vip_pool();
    assert_eq!(pool.to_string(), "10.47.0.0/16");
    let mut used = BTreeSet::new();
    let first = next_vip(pool, &used).unwrap();
    assert_eq!(first, Ipv4Addr::new(10, 47, 0, 1));
    used.insert(first);
    assert_eq!(next_vip(pool, &used), Some(Ipv4Addr::new(10, 47, 0, 2)));
    // The default plan's blocks stop short of the pool: 4,096 - 256.
    let step = 1u64 << 8;
    let blocks = (0..plan.blocks())
        .map(|i| Net::new(plan.cidr.nth(i * step), 24))
        .filter(|b| !b.overlaps(pool))
        .count();
    assert_eq!(blocks, 3840);
    let small: Net = "10.0.0.0/30".parse().unwrap();
    let mut used = BTreeSet::new();
    while let Some(v) = next_vip(small, &used) {
        used.insert(v);
    }
    assert_eq!(used.len(), 2, "{used:?}");
}

#[test]
fn a_block_has_no_255_ceiling() {
    let block: Net = "10.32.16.0/20".parse().unwrap();
    let mut used = BTreeSet::new();
    while let Some(a) = next_addr(block, &used, None) {
        used.insert(a);
    }
    assert_eq!(
        used.len(),
        4096 - 3,
        "all but the VTEP, gateway and broadcast"
    );
    assert!(!used.contains(&block.gateway()));
    assert!(!used.contains(&block.vtep()));
    assert!(!used.contains(&block.broadcast()));
}

#[test]
fn a_released_address_is_not_reused_at_once() {
    let block: Net = "10.32.3.0/29".parse().unwrap(); // .2 to .6
    let mut used = BTreeSet::new();
    let a = next_addr(block, &used, None).unwrap();
    assert_eq!(a, Ipv4Addr::new(10, 32, 3, 2));
    used.insert(a);
    let b = next_addr(block, &used, None).unwrap();
    used.insert(b);
    used.remove(&a);
    let c = next_addr(block, &used, None).unwrap();
    assert_eq!(c, Ipv4Addr::new(10, 32, 3, 4), "after the highest, not {a}");
    // The highest released: only the last handed out keeps it from coming
    // straight back.
    used.insert(c);
    used.remove(&c);
    assert_eq!(next_addr(block, &used, None), Some(c), "without memory");
    assert_eq!(
        next_addr(block, &used, Some(c)),
        Some(Ipv4Addr::new(10, 32, 3, 5)),
        "with it"
    );
}

proptest! {
    /// Random allocations and releases on a few blocks: an address in use
    /// is never handed out again, every address is a task address of its
    /// block, and a block with room always yields one.
    #[test]
    fn addresses_in_use_are_never_handed_out_twice(
        ops in proptest::collection::vec((0usize..3, any::<bool>(), 0usize..64), 1..400)
    ) {
        let plan = Plan::new("10.40.0.0/16".parse().unwrap(), 27).unwrap();
        let mut blocks = BTreeSet::new();
        let mut per_block: BTreeMap<Net, BTreeSet<Ipv4Addr>> = BTreeMap::new();
        for _ in 0..3 {
            let b = plan.next_block(&blocks).unwrap();
            blocks.insert(b);
            per_block.insert(b, BTreeSet::new());
        }
        let keys: Vec<Net> = per_block.keys().copied().collect();
        for (bi, alloc, pick) in ops {
            let b = keys[bi];
            let used = per_block.get_mut(&b).unwrap();
            if alloc {
                match next_addr(b, used, None) {
                    Some(a) => {
                        prop_assert!(!used.contains(&a), "{a} handed out twice");
                        prop_assert!(b.contains(a));
                        prop_assert!(a != b.gateway() && a != b.vtep() && a != b.broadcast());
                        used.insert(a);
                    }
                    None => prop_assert_eq!(used.len() as u64, b.size() - 3, "refused with room left"),
                }
            } else if !used.is_empty() {
                let a = *used.iter().nth(pick % used.len()).unwrap();
                used.remove(&a);
            }
        }
        // Blocks never overlap.
        let all: Vec<Net> = per_block.keys().copied().collect();
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                prop_assert!(!x.contains(y.addr) && !y.contains(x.addr));
            }
        }
    }
}
