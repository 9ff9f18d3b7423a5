/* kgmp_maps.bpf.h — the maps shared by every BPF program of the runtime (kgmp_trace.bpf.c,
 * scx_kgmp.bpf.c): one definition, so the loader can make scx_kgmp reuse the very maps of the
 * loaded kgmp_trace object (bpf_map__reuse_fd needs identical type, key, value and flags).
 * Include after vmlinux.h / bpf_helpers.h and kgmp_trace.h. */
#ifndef KGMP_MAPS_BPF_H
#define KGMP_MAPS_BPF_H

/* The runtime's shared memory (kgmp_trace.h), mmap'd by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct kgmp_shared);
} kgmp_shared SEC(".maps");

/* tid -> M slot; written by user space only (register_m / unregister_m). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KGMP_MAX_MS);
	__type(key, __u32);
	__type(value, __u32);
} kgmp_tids SEC(".maps");

#endif /* KGMP_MAPS_BPF_H */
