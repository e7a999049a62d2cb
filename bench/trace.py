#!/usr/bin/env python3
"""A realistic request mix for the cache-cost benchmark (bench/run.sh cost).

  trace.py make DATA_DIR TRACE CAPACITY   objects under DATA_DIR/bench/trace/, and the requests
  trace.py replay BASE_URL TRACE OUT [HEADER]
                                          requests in order over one keep-alive connection;
                                          one JSON line per request (key, bytes, hit)
  trace.py lru TRACE CAPACITY             an exact byte-bounded LRU of that capacity, offline
  trace.py tinylfu TRACE CAPACITY         an idealized TinyLFU, offline: exact request counts,
                                          and a newcomer is kept only when it was asked for more
                                          often than the entries it would evict together
  trace.py lfu TRACE CAPACITY             a perfect LFU, offline: exact counts of every object ever
                                          asked for; the least asked-for entries are evicted first,
                                          and a newcomer is kept only when asked for more often
                                          than each of them
  trace.py oracle TRACE CAPACITY          a bound: the best fixed set of objects for that
                                          capacity, chosen knowing every request in advance

The mix: 1,500 objects with photo-like sizes (log-uniform, 20-500 KiB) and Zipf popularity
(s = 0.9); 6,000 requests, then one pass over cold objects never asked for before or after
(as many as fill the cache once), then 6,000 more. Seeded: every run replays the same trace.
"""
import http.client
import json
import math
import os
import random
import sys
import time
import urllib.parse

OBJECTS = 1500
ZIPF_S = 0.9
BEFORE = AFTER = 6000
SMALLEST, LARGEST = 20 * 1024, 500 * 1024
SEED = 20261130


def make(data_dir, trace_path, capacity):
    rng = random.Random(SEED)
    size = lambda: int(math.exp(rng.uniform(math.log(SMALLEST), math.log(LARGEST))))
    hot = [(f"bench/trace/hot/{i:04d}.jpg", size()) for i in range(OBJECTS)]
    cold, held = [], 0
    while held < capacity:
        cold.append((f"bench/trace/cold/{len(cold):04d}.jpg", size()))
        held += cold[-1][1]
    for key, n in hot + cold:
        path = os.path.join(data_dir, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(rng.randbytes(n))
    # Popularity is unrelated to name or size: rank r is asked for with weight 1 / r^s.
    ranks = hot[:]
    rng.shuffle(ranks)
    weights = [1 / (r + 1) ** ZIPF_S for r in range(OBJECTS)]
    pick = lambda n: rng.choices(ranks, weights=weights, k=n)
    requests = pick(BEFORE) + cold + pick(AFTER)
    with open(trace_path, "w") as f:
        for i, (key, n) in enumerate(requests):
            phase = "scan" if BEFORE <= i < BEFORE + len(cold) else "zipf"
            f.write(f"{key}\t{n}\t{phase}\n")
    print(json.dumps({"requests": len(requests), "objects": OBJECTS + len(cold),
                      "scan_requests": len(cold), "hot_bytes": sum(n for _, n in hot),
                      "scan_bytes": held, "capacity": capacity}))


def load(trace_path):
    with open(trace_path) as f:
        return [(k, int(n), p) for k, n, p in (l.rstrip("\n").split("\t") for l in f if l.strip())]


def replay(base, trace_path, out_path, header=None):
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    headers = {}
    if header:
        name, value = header.split(":", 1)
        headers[name.strip()] = value.strip()
    started = time.monotonic()
    with open(out_path, "w") as out:
        for key, size, phase in load(trace_path):
            conn.request("GET", f"{url.path.rstrip('/')}/{key}", headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200 or len(body) != size:
                sys.exit(f"{key}: status {response.status}, {len(body)} bytes of {size}")
            state = (response.getheader("X-Cache") or "").upper()
            out.write(json.dumps({"key": key, "bytes": size, "phase": phase,
                                  "hit": state == "HIT"}) + "\n")
    print(json.dumps({"seconds": round(time.monotonic() - started, 1)}))


def replay_offline(trace_path, capacity, admit=lambda key, victims: True, seen=lambda key: None):
    """A byte-bounded LRU replayed offline: a miss inserts the object, evicting the least
    recently used until it fits, when `admit` agrees; `seen` hears of every request first.
    Objects larger than the capacity are never kept."""
    from collections import OrderedDict
    cache, held, fetched, sent, hits = OrderedDict(), 0, 0, 0, []
    for key, size, _ in load(trace_path):
        seen(key)
        sent += size
        if key in cache:
            cache.move_to_end(key)
            hits.append(True)
            continue
        hits.append(False)
        fetched += size
        if size > capacity:
            continue
        victims, freed = [], 0
        for victim, victim_size in cache.items():
            if held - freed + size <= capacity:
                break
            victims.append(victim)
            freed += victim_size
        if not admit(key, victims):
            continue
        for victim in victims:
            held -= cache.pop(victim)
        cache[key] = size
        held += size
    print(json.dumps({"s3_bytes": fetched, "client_bytes": sent, "hits": hits}))


def lru(trace_path, capacity):
    replay_offline(trace_path, capacity)


def tinylfu(trace_path, capacity):
    from collections import Counter
    counts = Counter()
    replay_offline(trace_path, capacity,
                   admit=lambda key, victims: counts[key] > sum(counts[v] for v in victims),
                   seen=lambda key: counts.update([key]))


def lfu(trace_path, capacity):
    from collections import Counter
    counts, sizes, cache, held, fetched, sent, hits = Counter(), {}, {}, 0, 0, 0, []
    for clock, (key, size, _) in enumerate(load(trace_path)):
        counts[key] += 1
        sizes[key] = size
        sent += size
        if key in cache:
            cache[key] = clock
            hits.append(True)
            continue
        hits.append(False)
        fetched += size
        if size > capacity:
            continue
        victims, freed = [], 0
        # Least asked-for first; among equals, the least recently used.
        for victim in sorted(cache, key=lambda k: (counts[k], cache[k])):
            if held - freed + size <= capacity:
                break
            victims.append(victim)
            freed += sizes[victim]
        if any(counts[v] >= counts[key] for v in victims):
            continue
        for victim in victims:
            del cache[victim]
            held -= sizes[victim]
        cache[key] = clock
        held += size
    print(json.dumps({"s3_bytes": fetched, "client_bytes": sent, "hits": hits}))


def oracle(trace_path, capacity):
    """The most requested objects that fit, chosen knowing the whole trace; each is fetched
    once, everything else on every request. No policy that learns as it goes does much
    better on requests drawn independently from a fixed popularity."""
    from collections import Counter
    requests = load(trace_path)
    counts = Counter(key for key, _, _ in requests)
    sizes = {key: size for key, size, _ in requests}
    kept, held = set(), 0
    for key in sorted(counts, key=lambda k: (-counts[k], sizes[k])):
        if held + sizes[key] <= capacity:
            kept.add(key)
            held += sizes[key]
    fetched = sum(sizes[k] * (1 if k in kept else n) for k, n in counts.items())
    sent = sum(size for _, size, _ in requests)
    print(json.dumps({"s3_bytes": fetched, "client_bytes": sent,
                      "first_fetch_bytes": sum(sizes.values())}))


if __name__ == "__main__":
    verb, args = sys.argv[1], sys.argv[2:]
    if verb == "make":
        make(args[0], args[1], int(args[2]))
    elif verb == "replay":
        replay(args[0], args[1], args[2], args[3] if len(args) > 3 else None)
    elif verb == "lru":
        lru(args[0], int(args[1]))
    elif verb == "tinylfu":
        tinylfu(args[0], int(args[1]))
    elif verb == "lfu":
        lfu(args[0], int(args[1]))
    elif verb == "oracle":
        oracle(args[0], int(args[1]))
    else:
        sys.exit(__doc__)
