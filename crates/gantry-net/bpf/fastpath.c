// SPDX-License-Identifier: GPL-2.0
//
// Gantry's overlay fast path: tc (TCX) programs that carry packets between
// tasks past the host's bridge and IP forwarding, as Cilium's host routing
// does. Built by build.rs with `clang -target bpf`, loaded by
// `gantry-net::fastpath` (aya).
//
// Only traffic between two task addresses that share a stack network takes
// it; everything else (the host, gateways, DNS, published ports, the world,
// tasks of other stacks, a task whose networks are not in the map) is
// passed to the stack unchanged, where the nftables rules decide as before.
// So the fast path can only skip work the stack would have done with the
// same verdict ("accept"), never allow what the stack refuses.
//
// - `from_task`, on the ingress of each task veth's host end (packets the
//   task sends): to a task on this node, straight into its namespace
//   (bpf_redirect_peer); to a task elsewhere, out of the device the FIB
//   names (the VXLAN device, or the underlay with direct routing) with the
//   next hop's MAC from the neighbour table (bpf_redirect_neigh).
// - `to_task`, on the ingress of the VXLAN device (and of the underlay with
//   direct routing): packets for a task on this node, straight into its
//   namespace.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>

// The few libbpf definitions used (libbpf's headers are not needed).
#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name
#define inline_always inline __attribute__((always_inline))
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_redirect)(__u32 ifindex, __u64 flags) = (void *)BPF_FUNC_redirect;
static long (*bpf_redirect_peer)(__u32 ifindex, __u64 flags) = (void *)BPF_FUNC_redirect_peer;
static long (*bpf_redirect_neigh)(__u32 ifindex, struct bpf_redir_neigh *params, int plen,
                                  __u64 flags) = (void *)BPF_FUNC_redirect_neigh;
static long (*bpf_fib_lookup)(void *ctx, struct bpf_fib_lookup *params, int plen,
                              __u32 flags) = (void *)BPF_FUNC_fib_lookup;
static long (*bpf_skb_pull_data)(struct __sk_buff *skb, __u32 len) = (void *)BPF_FUNC_skb_pull_data;

#define AF_INET 2
#define HEADERS (sizeof(struct ethhdr) + sizeof(struct iphdr))
// Stack networks a task may be on for the fast path; a task on more is
// left out of `members` and goes through the stack.
#define NETS 4

// A task on this node, by its address (network byte order).
struct endpoint {
    __u32 ifindex;   // the host end of its veth
    __u8 mac[6];     // its eth0
    __u8 gw_mac[6];  // the bridge's (what the task sees as its gateway)
};

// The stack networks a task address is on (ids from 1; 0 is no network).
struct member {
    __u32 nets[NETS];
};

struct config {
    __u32 bridge_ifindex;
};

enum counter { TO_TASK, LOCAL, REMOTE, COUNTERS };

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u32);
    __type(value, struct endpoint);
} endpoints SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, __u32);
    __type(value, struct member);
} members SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct config);
} config SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, COUNTERS);
    __type(key, __u32);
    __type(value, __u64);
} counters SEC(".maps");

static inline_always void count(__u32 which) {
    __u64 *c = bpf_map_lookup_elem(&counters, &which);
    if (c)
        *c += 1;
}

// Whether the two addresses are tasks on one stack network.
static inline_always int share(__u32 a, __u32 b) {
    struct member *ma = bpf_map_lookup_elem(&members, &a);
    struct member *mb = bpf_map_lookup_elem(&members, &b);
    if (!ma || !mb)
        return 0;
#pragma unroll
    for (int i = 0; i < NETS; i++) {
#pragma unroll
        for (int j = 0; j < NETS; j++) {
            if (ma->nets[i] && ma->nets[i] == mb->nets[j])
                return 1;
        }
    }
    return 0;
}

// The Ethernet and IPv4 headers, or NULL (not IPv4, or too short).
static inline_always struct iphdr *ipv4(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    if (data + HEADERS > end) {
        if (bpf_skb_pull_data(skb, HEADERS))
            return 0;
        data = (void *)(long)skb->data;
        end = (void *)(long)skb->data_end;
        if (data + HEADERS > end)
            return 0;
    }
    struct ethhdr *eth = data;
    if (eth->h_proto != __builtin_bswap16(ETH_P_IP))
        return 0;
    struct iphdr *ip = data + sizeof(struct ethhdr);
    if (ip->version != 4 || ip->ihl < 5)
        return 0;
    return ip;
}

// As the kernel's ip_decrease_ttl: the checksum updated in place.
static inline_always void decrease_ttl(struct iphdr *ip) {
    __u32 check = ip->check;
    check += __builtin_bswap16(0x0100);
    ip->check = (__u16)(check + (check >= 0xFFFF));
    ip->ttl--;
}

static inline_always void set_macs(struct iphdr *ip, const __u8 *dst, const __u8 *src) {
    struct ethhdr *eth = (void *)ip - sizeof(struct ethhdr);
    __builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
    __builtin_memcpy(eth->h_source, src, ETH_ALEN);
}

SEC("classifier")
int from_task(struct __sk_buff *skb) {
    struct iphdr *ip = ipv4(skb);
    if (!ip)
        return TC_ACT_OK;
    __u32 src = ip->saddr, dst = ip->daddr;
    // The sender must be the task this veth belongs to: a task that
    // forges another's address gets no help here.
    struct endpoint *me = bpf_map_lookup_elem(&endpoints, &src);
    if (!me || me->ifindex != skb->ingress_ifindex || !share(src, dst))
        return TC_ACT_OK;
    struct endpoint *to = bpf_map_lookup_elem(&endpoints, &dst);
    if (to) {
        // Same node: as across the bridge, no TTL decrease.
        set_macs(ip, to->mac, to->gw_mac);
        count(LOCAL);
        return bpf_redirect_peer(to->ifindex, 0);
    }
    if (ip->ttl <= 1)
        return TC_ACT_OK;
    struct bpf_fib_lookup fib = {
        .family = AF_INET,
        .tos = ip->tos,
        .l4_protocol = ip->protocol,
        .ipv4_src = src,
        .ipv4_dst = dst,
        .ifindex = skb->ingress_ifindex,
    };
    long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
    if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
        return TC_ACT_OK;
    // A task address routed to the bridge is one of this node's that has
    // no endpoint (yet): the stack knows better.
    __u32 zero = 0;
    struct config *cfg = bpf_map_lookup_elem(&config, &zero);
    if (!cfg || fib.ifindex == cfg->bridge_ifindex)
        return TC_ACT_OK;
    decrease_ttl(ip);
    count(REMOTE);
    if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
        struct bpf_redir_neigh nh = {.nh_family = AF_INET, .ipv4_nh = fib.ipv4_dst};
        return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
    }
    set_macs(ip, fib.dmac, fib.smac);
    return bpf_redirect(fib.ifindex, 0);
}

SEC("classifier")
int to_task(struct __sk_buff *skb) {
    struct iphdr *ip = ipv4(skb);
    if (!ip)
        return TC_ACT_OK;
    __u32 src = ip->saddr, dst = ip->daddr;
    struct endpoint *to = bpf_map_lookup_elem(&endpoints, &dst);
    if (!to || ip->ttl <= 1 || !share(src, dst))
        return TC_ACT_OK;
    // A packet from our own tasks looped back is not ours to take.
    if (bpf_map_lookup_elem(&endpoints, &src))
        return TC_ACT_OK;
    decrease_ttl(ip);
    set_macs(ip, to->mac, to->gw_mac);
    count(TO_TASK);
    return bpf_redirect_peer(to->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
