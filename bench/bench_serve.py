"""The HTTP service's overhead: POST /predict against calling the predictor directly, same model and input.

    python bench/bench_serve.py [--requests 20] [--max-new-tokens 64]

A tiny LLaMA is trained on one change (as in the tests) so that every call generates the same
well-formed commit; the reference is `Predictor.predict` in this process, measured in the same run.
Also reports the model-free baselines' speed on a generated history (targets/s).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' fixture builders (repo2model itself is installed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--history-commits", type=int, default=2000)
    parser.add_argument("--main-thread", action="store_true", help="run the direct reference on the main thread")
    args = parser.parse_args()

    import helpers_predict as H
    from repo2model.stages import serve
    from repo2model.serving.service import Service, make_server
    from repo2model.serving.history import history_from_records
    from repo2model.serving.predictor import Predictor
    from repo2model.serving.settings import PredictionConfig

    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer, lang, _, _ = H.trained_predictor_parts(Path(tmp))
        predictor = Predictor(model, tokenizer, lang, PredictionConfig(max_new_tokens=args.max_new_tokens))
        history = H.fixture_history()
        records = [{**c.to_dict(), "chunks": [ch.to_dict() for ch in chunks]} for c, chunks in history]
        predictor.predict(history, H.TASK)  # warm-up

        server = make_server(Service(predictor, serve.Config(port=0)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
        body = json.dumps({"task": H.TASK, "commits": records})
        direct_s = http_s = 0.0

        def call_direct() -> None:
            nonlocal direct_s, direct
            started = time.perf_counter()
            direct = predictor.predict(history_from_records(records), H.TASK)
            direct_s += time.perf_counter() - started

        direct = None
        for _ in range(args.requests):  # alternate, so that load from elsewhere hits both alike
            # The reference runs on a worker thread, like the service's handlers: on a busy CPU, torch's
            # thread pool makes the main thread's tiny-model decoding many times slower (see --main-thread).
            if args.main_thread:
                call_direct()
            else:
                worker = threading.Thread(target=call_direct)
                worker.start()
                worker.join()
            started = time.perf_counter()
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            reply = json.loads(conn.getresponse().read())
            http_s += time.perf_counter() - started
        direct_s /= args.requests
        http_s /= args.requests
        server.shutdown()
        server.server_close()
        assert [f["path"] for f in reply["files"]] == [f.path for f in direct.files]

    print(f"predict direct: {direct_s * 1000:.1f} ms/request ({args.max_new_tokens} max new tokens, "
          f"{len(direct.candidates[0].text)} chars generated)")
    print(f"POST /predict:  {http_s * 1000:.1f} ms/request (keep-alive connection)")
    print(f"ratio HTTP / direct: {http_s / direct_s:.3f}")

    bench_baselines(args.history_commits)


def bench_baselines(n: int) -> None:
    import random

    from repo2model.stages import evaluate
    from test_evaluate import write_history

    rng = random.Random(0)
    files = [f"src/m{i}.py" for i in range(200)]
    history = [(f"{i + 1:040x}", [(p, "MODIFIED_FUNCTION", f"f{j}", "src") for j, p in
                                  enumerate(sorted(rng.sample(files, rng.randint(1, 8))))]) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_history(Path(tmp) / "out", [(h, u) for h, u in history])
        started = time.perf_counter()
        summary = evaluate.run(evaluate.Config(test_from=n // 2), paths)
        seconds = time.perf_counter() - started
    print(f"baselines: {summary['targets']} targets over a {n}-commit history in {seconds:.2f}s "
          f"({summary['targets'] / seconds:.0f} targets/s, all three baselines + report)")


if __name__ == "__main__":
    main()
