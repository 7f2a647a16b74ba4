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
//   A packet for a node reached over VXLAN is encapsulated here, as the
//   kernel's VXLAN device would (outer IPv4/UDP 4789/VXLAN/inner Ethernet,
//   the peer's VTEP MAC inside, no UDP checksum), and sent straight out of
//   the underlay device: the VXLAN device and the outer packet's trip
//   through the host's stack are skipped.
// - `to_task`, on the ingress of the underlay device and of the VXLAN
//   device: packets for a task on this node, straight into its namespace;
//   on the underlay, VXLAN packets for our VNI that carry one are
//   decapsulated first.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>

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
static long (*bpf_skb_adjust_room)(struct __sk_buff *skb, __s32 len_diff, __u32 mode,
                                   __u64 flags) = (void *)BPF_FUNC_skb_adjust_room;
static long (*bpf_skb_store_bytes)(struct __sk_buff *skb, __u32 offset, const void *from,
                                   __u32 len, __u64 flags) = (void *)BPF_FUNC_skb_store_bytes;
static __u32 (*bpf_get_hash_recalc)(struct __sk_buff *skb) = (void *)BPF_FUNC_get_hash_recalc;

#define AF_INET 2
#define IPPROTO_UDP 17
#define IP_DF 0x4000
#define VXLAN_PORT 4789
#define HEADERS (sizeof(struct ethhdr) + sizeof(struct iphdr))

// What VXLAN puts between the outer Ethernet header and the inner IP
// packet (50 bytes, the overlay's MTU overhead).
struct vxlan_encap {
    struct iphdr ip;
    struct udphdr udp;
    __be32 vx_flags;
    __be32 vx_vni;
    struct ethhdr eth;
} __attribute__((packed));
#define ENCAP ((int)sizeof(struct vxlan_encap))
// A VXLAN packet's headers up to the inner IP header's end.
#define VXLAN_HEADERS (sizeof(struct ethhdr) + ENCAP + sizeof(struct iphdr))
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
    __u32 vxlan_ifindex;
    __be32 underlay_ip;  // this node's: the outer source
    __u32 vni;
    __be32 block_mask;   // the netmask of a node's block
};

// Another node reached over VXLAN, by its VTEP address (the next hop the
// FIB gives for its block).
struct peer {
    __be32 underlay_ip;
};

// The slots of `counters`; `Counter` in fastpath.rs reads them by these
// numbers (a unit test there checks the two agree).
enum counter { TO_TASK, LOCAL, REMOTE, ENCAPSULATED, DECAPSULATED, SPOOFED, COUNTERS };

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
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __be32);
    __type(value, struct peer);
} peers SEC(".maps");

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

// The packet's first `len` bytes, pulled into the linear area if need
// be, or NULL (the packet is shorter).
static inline_always void *linear(struct __sk_buff *skb, __u32 len) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    if (data + len > end) {
        if (bpf_skb_pull_data(skb, len))
            return 0;
        data = (void *)(long)skb->data;
        end = (void *)(long)skb->data_end;
        if (data + len > end)
            return 0;
    }
    return data;
}

// The Ethernet and IPv4 headers, or NULL (not IPv4, or too short).
static inline_always struct iphdr *ipv4(struct __sk_buff *skb) {
    void *data = linear(skb, HEADERS);
    if (!data)
        return 0;
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

// Rewrites the Ethernet header at the packet's start (after its pointers
// were invalidated by a helper).
static inline_always long store_macs(struct __sk_buff *skb, const __u8 *dst, const __u8 *src) {
    struct ethhdr eth = {.h_proto = __builtin_bswap16(ETH_P_IP)};
    __builtin_memcpy(eth.h_dest, dst, ETH_ALEN);
    __builtin_memcpy(eth.h_source, src, ETH_ALEN);
    return bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0);
}

// The task of this node a packet from another node may go straight to:
// its destination, when the source is a task elsewhere that shares one of
// its networks and the packet may be forwarded once more; else NULL.
static inline_always struct endpoint *deliverable(struct iphdr *ip) {
    __u32 src = ip->saddr, dst = ip->daddr;
    struct endpoint *to = bpf_map_lookup_elem(&endpoints, &dst);
    if (!to || ip->ttl <= 1 || !share(src, dst))
        return 0;
    // A packet from our own tasks looped back is not ours to take.
    if (bpf_map_lookup_elem(&endpoints, &src))
        return 0;
    return to;
}

static inline_always struct config *get_config(void) {
    __u32 zero = 0;
    return bpf_map_lookup_elem(&config, &zero);
}

static inline_always __u16 ip_checksum(struct iphdr *ip) {
    __u16 *w = (__u16 *)ip;
    __u32 sum = 0;
#pragma unroll
    for (int i = 0; i < (int)sizeof(*ip) / 2; i++)
        sum += w[i];
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return ~sum;
}

// Wraps the packet (its inner TTL already decreased) in VXLAN for `peer`,
// from our VTEP MAC `smac` to its VTEP MAC `dmac`, and sends it out of the
// underlay toward the peer's underlay address. Returns a tc verdict, or
// -1 when the packet is left as it was (the caller sends it to the VXLAN
// device instead).
static inline_always long encapsulate(struct __sk_buff *skb, struct config *cfg,
                                      struct peer *peer, const __u8 *dmac, const __u8 *smac) {
    __u32 inner_len = skb->len - sizeof(struct ethhdr);
    if (inner_len + ENCAP > 0xffff)
        return -1;
    struct bpf_fib_lookup out = {
        .family = AF_INET,
        .ipv4_src = cfg->underlay_ip,
        .ipv4_dst = peer->underlay_ip,
        .ifindex = skb->ingress_ifindex,
    };
    long rc = bpf_fib_lookup(skb, &out, sizeof(out), 0);
    if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
        return -1;
    // The UDP source port spreads flows as the kernel's does (hash of the
    // inner flow over the ephemeral range), for ECMP and RSS on the way.
    __u16 sport = 32768 + bpf_get_hash_recalc(skb) % 28232;
    struct iphdr ip = {
        .version = 4,
        .ihl = 5,
        .tot_len = __builtin_bswap16(inner_len + ENCAP),
        .frag_off = __builtin_bswap16(IP_DF),
        .ttl = 64,
        .protocol = IPPROTO_UDP,
        .saddr = cfg->underlay_ip,
        .daddr = peer->underlay_ip,
    };
    ip.check = ip_checksum(&ip);
    struct vxlan_encap h = {
        .ip = ip,
        .udp = {
            .source = __builtin_bswap16(sport),
            .dest = __builtin_bswap16(VXLAN_PORT),
            .len = __builtin_bswap16(inner_len + ENCAP - sizeof(struct iphdr)),
        },
        .vx_flags = __builtin_bswap32(0x08000000),
        .vx_vni = __builtin_bswap32(cfg->vni << 8),
        .eth = {.h_proto = __builtin_bswap16(ETH_P_IP)},
    };
    __builtin_memcpy(h.eth.h_dest, dmac, ETH_ALEN);
    __builtin_memcpy(h.eth.h_source, smac, ETH_ALEN);
    __u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
                  BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
                  ((__u64)(sizeof(struct ethhdr) & BPF_ADJ_ROOM_ENCAP_L2_MASK)
                   << BPF_ADJ_ROOM_ENCAP_L2_SHIFT);
    if (bpf_skb_adjust_room(skb, ENCAP, BPF_ADJ_ROOM_MAC, flags))
        return -1;
    if (bpf_skb_store_bytes(skb, sizeof(struct ethhdr), &h, ENCAP, 0))
        return TC_ACT_SHOT;
    count(ENCAPSULATED);
    if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
        struct bpf_redir_neigh nh = {.nh_family = AF_INET, .ipv4_nh = out.ipv4_dst};
        return bpf_redirect_neigh(out.ifindex, &nh, sizeof(nh), 0);
    }
    if (store_macs(skb, out.dmac, out.smac))
        return TC_ACT_SHOT;
    return bpf_redirect(out.ifindex, 0);
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
    struct config *cfg = get_config();
    if (!cfg || fib.ifindex == cfg->bridge_ifindex)
        return TC_ACT_OK;
    decrease_ttl(ip);
    count(REMOTE);
    if (fib.ifindex == cfg->vxlan_ifindex && rc == BPF_FIB_LKUP_RET_SUCCESS) {
        struct peer *peer = bpf_map_lookup_elem(&peers, &fib.ipv4_dst);
        if (peer) {
            long verdict = encapsulate(skb, cfg, peer, fib.dmac, fib.smac);
            if (verdict >= 0)
                return verdict;
            // Left as it was: to the VXLAN device, below.
            ip = ipv4(skb);
            if (!ip)
                return TC_ACT_SHOT;
        }
    }
    if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
        struct bpf_redir_neigh nh = {.nh_family = AF_INET, .ipv4_nh = fib.ipv4_dst};
        return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
    }
    set_macs(ip, fib.dmac, fib.smac);
    return bpf_redirect(fib.ifindex, 0);
}

// A VXLAN packet for our VNI and address carrying a packet for a task of
// this node, from a task that shares one of its networks: decapsulated
// and sent into the task. Anything else: -1, untouched (the kernel's VXLAN
// device takes what is VXLAN).
static inline_always long decapsulate(struct __sk_buff *skb, struct iphdr *outer) {
    struct config *cfg = get_config();
    if (!cfg || outer->daddr != cfg->underlay_ip || outer->ihl != 5 ||
        (outer->frag_off & __builtin_bswap16(0x3fff)))
        return -1;
    // (Pulling data in invalidates `outer`.)
    __be32 outer_src = outer->saddr;
    void *data = linear(skb, VXLAN_HEADERS);
    if (!data)
        return -1;
    struct vxlan_encap *h = data + sizeof(struct ethhdr);
    struct iphdr *ip = (void *)(h + 1);
    if (h->udp.dest != __builtin_bswap16(VXLAN_PORT) ||
        h->vx_flags != __builtin_bswap32(0x08000000) ||
        h->vx_vni != __builtin_bswap32(cfg->vni << 8) ||
        h->eth.h_proto != __builtin_bswap16(ETH_P_IP) || ip->version != 4 || ip->ihl < 5)
        return -1;
    // Our VXLAN: only from another node, for a source in that node's block
    // (its VTEP address is the block's first). Anything else is a forgery,
    // dropped here as the firewall would drop it.
    __be32 vtep = ip->saddr & cfg->block_mask;
    struct peer *from = bpf_map_lookup_elem(&peers, &vtep);
    if (!from || from->underlay_ip != outer_src) {
        count(SPOOFED);
        return TC_ACT_SHOT;
    }
    struct endpoint *to = deliverable(ip);
    if (!to)
        return -1;
    decrease_ttl(ip);
    // Off come the outer IP, UDP and VXLAN headers and the inner Ethernet
    // header; the outer Ethernet header stays, readdressed. GSO keeps the
    // inner packet's segment size.
    if (bpf_skb_adjust_room(skb, -ENCAP, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO))
        return TC_ACT_SHOT;
    if (store_macs(skb, to->mac, to->gw_mac))
        return TC_ACT_SHOT;
    count(DECAPSULATED);
    count(TO_TASK);
    return bpf_redirect_peer(to->ifindex, 0);
}

SEC("classifier")
int to_task(struct __sk_buff *skb) {
    struct iphdr *ip = ipv4(skb);
    if (!ip)
        return TC_ACT_OK;
    if (ip->protocol == IPPROTO_UDP) {
        long verdict = decapsulate(skb, ip);
        if (verdict >= 0)
            return verdict;
        ip = ipv4(skb);
        if (!ip)
            return TC_ACT_OK;
    }
    struct endpoint *to = deliverable(ip);
    if (!to)
        return TC_ACT_OK;
    decrease_ttl(ip);
    set_macs(ip, to->mac, to->gw_mac);
    count(TO_TASK);
    return bpf_redirect_peer(to->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
