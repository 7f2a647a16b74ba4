// SPDX-License-Identifier: GPL-2.0
//
// Gantry's service virtual IPs (compose's `endpoint_mode: vip`), at the
// socket, as Cilium's socket load balancer does: a cgroup program on
// connect() and on unconnected UDP sends turns a service's virtual IP into
// the address of one of its running tasks, chosen at random. The packets
// then carry task addresses only, so nothing is NATed per packet, the
// overlay's fast path and firewall see the real pair, and nothing has to be
// undone on the way back. For UDP replies and getpeername() the task's
// address is turned back into the virtual IP from `revnat`, keyed by the
// socket.
//
// Built by build.rs with `clang -target bpf`, loaded by `gantry-net::vip`
// (aya), attached to the root of the cgroup v2 hierarchy (every process on
// the node, tasks and host alike, can reach a virtual IP). An address
// that is not a virtual IP is left alone.

#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
                                   __u64 flags) = (void *)BPF_FUNC_map_update_elem;
static __u32 (*bpf_get_prandom_u32)(void) = (void *)BPF_FUNC_get_prandom_u32;
static __u64 (*bpf_get_socket_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;

#define AF_INET 2

// A virtual IP's running tasks: `count` of them, in `backends` at slots
// 0..count.
struct service {
    __u32 count;
};

struct slot {
    __be32 vip;
    __u32 slot;
};

// A socket's translated peer: the task it was given for a virtual IP.
struct peer {
    __u64 cookie;
    __be32 addr;
    __u32 port;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, __be32);
    __type(value, struct service);
} vips SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 262144);
    __type(key, struct slot);
    __type(value, __be32);
} backends SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 262144);
    __type(key, struct peer);
    __type(value, __be32);
} revnat SEC(".maps");

// Turns a virtual IP into a task's address; 0 refuses (a virtual IP with
// no running task: the caller gets EPERM at once rather than a timeout).
static inline __attribute__((always_inline)) int translate(struct bpf_sock_addr *ctx) {
    if (ctx->user_family != AF_INET)
        return 1;
    __be32 vip = ctx->user_ip4;
    struct service *s = bpf_map_lookup_elem(&vips, &vip);
    if (!s)
        return 1;
    __u32 count = s->count;
    if (count == 0)
        return 0;
    struct slot k = {.vip = vip, .slot = bpf_get_prandom_u32() % count};
    __be32 *addr = bpf_map_lookup_elem(&backends, &k);
    if (!addr)
        return 0;
    struct peer p = {.cookie = bpf_get_socket_cookie(ctx), .addr = *addr, .port = ctx->user_port};
    bpf_map_update_elem(&revnat, &p, &vip, BPF_ANY);
    ctx->user_ip4 = *addr;
    return 1;
}

// Gives back the virtual IP a task's address was translated from.
static inline __attribute__((always_inline)) int untranslate(struct bpf_sock_addr *ctx) {
    if (ctx->user_family != AF_INET)
        return 1;
    struct peer p = {.cookie = bpf_get_socket_cookie(ctx), .addr = ctx->user_ip4, .port = ctx->user_port};
    __be32 *vip = bpf_map_lookup_elem(&revnat, &p);
    if (vip)
        ctx->user_ip4 = *vip;
    return 1;
}

SEC("cgroup/connect4")
int vip_connect4(struct bpf_sock_addr *ctx) { return translate(ctx); }

SEC("cgroup/sendmsg4")
int vip_sendmsg4(struct bpf_sock_addr *ctx) { return translate(ctx); }

SEC("cgroup/recvmsg4")
int vip_recvmsg4(struct bpf_sock_addr *ctx) { return untranslate(ctx); }

SEC("cgroup/getpeername4")
int vip_getpeername4(struct bpf_sock_addr *ctx) { return untranslate(ctx); }

char LICENSE[] SEC("license") = "GPL";
