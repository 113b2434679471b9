"""The benchmark's data-heavy workloads written as Dask and Ray users would write them, timed on
this machine beside thunkmesh (`thunkmesh-bench versus`).

Each task returns its bytes as a Python object: the frameworks keep them in their own object
stores (Dask's worker memory, Ray's shared-memory plasma store) and move them between worker
processes themselves. The time is from submitting the graph to having the result, excluding
starting the cluster (as thunkmesh's `job_ms` excludes starting the nodes). Prints one JSON object.
"""

import argparse
import json
import time

MIB = 1 << 20


def produce(p, size):
    line = f"{p}\n".encode()
    return (line * (size // len(line) + 1))[:size]


def concat(*parts):
    return b"".join(parts)


def nothing():
    return None


def count(*parts):
    return sum(len(p) for p in parts)


def swab(data):
    # dd conv=swab: swap every pair of bytes (an odd last byte stays).
    out = bytearray(data)
    even = len(out) - len(out) % 2
    out[0:even:2], out[1:even:2] = data[1:even:2], data[0:even:2]
    return bytes(out)


def fan_in_graph(submit, producers=64, reducers=8, size=4 * MIB):
    per = producers // reducers
    parts = [submit(produce, p, size) for p in range(producers)]
    reduced = [submit(concat, *parts[r * per:(r + 1) * per]) for r in range(reducers)]
    return submit(count, *reduced)


def chain_graph(submit, length=200, size=16 * MIB):
    data = submit(produce, "seed", size)
    for _ in range(length):
        data = submit(swab, data)
    return submit(count, data)


GRAPHS = {"fan-in": fan_in_graph, "chain-16m": chain_graph}


def run_dask(graph, workers, threads):
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True) as cluster, Client(cluster) as client:
        client.submit(nothing, pure=False).result()
        started = time.perf_counter()
        result = GRAPHS[graph](lambda f, *a: client.submit(f, *a, pure=False)).result()
        return time.perf_counter() - started, result


def run_ray(graph, workers, threads):
    import ray

    ray.init(num_cpus=workers * threads, include_dashboard=False, log_to_driver=False)
    try:
        remotes = {}

        def submit(f, *args):
            remote = remotes.setdefault(f, ray.remote(f))
            return remote.remote(*args)

        ray.get(submit(nothing))
        started = time.perf_counter()
        result = ray.get(GRAPHS[graph](submit))
        return time.perf_counter() - started, result
    finally:
        ray.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("framework", choices=["dask", "ray"])
    parser.add_argument("graph", choices=sorted(GRAPHS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="tasks each worker runs at once")
    args = parser.parse_args()
    run = run_dask if args.framework == "dask" else run_ray
    seconds, result = run(args.graph, args.workers, args.threads)
    print(json.dumps({"framework": args.framework, "graph": args.graph, "seconds": seconds, "result": result}))


if __name__ == "__main__":
    main()
