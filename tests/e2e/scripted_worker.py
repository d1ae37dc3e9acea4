"""A worker that speaks the real wire protocol but answers every request with a fixed text.

It lets end-to-end tests drive the real router with model output of their choosing (a tool call, a
reasoning block), token by token, one token per step. Run as
`python -m tests.e2e.scripted_worker --listen ADDR --model-dir DIR --text-file FILE`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import zmq

from glm47 import _native
from glm47.worker import wire


def serve(listen: str, model_dir: str, text: str) -> None:
    tok = _native.Tokenizer(model_dir)
    script = tok.encode(text)
    eos = tok.eos_token_ids
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(listen)
    pending: dict[tuple[bytes, str], int] = {}  # (connection, rid) -> tokens sent so far
    limits: dict[tuple[bytes, str], int] = {}
    while True:
        if sock.poll(timeout=None if not pending else 0):
            ident, data = sock.recv_multipart()
            msg = wire.decode(data)
            if isinstance(msg, wire.Hello):
                ready = wire.Ready(
                    model="scripted",
                    vocab_size=tok.vocab_size,
                    eos_token_ids=list(eos),
                    max_req_total_len=4096,
                    max_running_requests=64,
                    kv_capacity_tokens=65536,
                    mtp_step=0,
                    worker_id="scripted",
                )
                sock.send_multipart([ident, wire.encode(ready)])
            elif isinstance(msg, wire.Submit):
                for r in msg.reqs:
                    pending[(ident, r.rid)] = 0
                    limits[(ident, r.rid)] = r.max_new_tokens
            elif isinstance(msg, wire.Abort):
                for rid in msg.rids:
                    pending.pop((ident, rid), None)
            continue
        by_conn: dict[bytes, list[wire.Output]] = {}
        for key, sent in list(pending.items()):
            ident, rid = key
            done = sent + 1 >= min(len(script) + 1, limits[key])
            token = script[sent] if sent < len(script) else eos[0]
            finish = None
            if done:
                finish = "stop" if sent >= len(script) else "length"
                del pending[key]
            else:
                pending[key] = sent + 1
            out = wire.Output(
                rid=rid,
                ids=[token],
                finish=finish,
                prompt_tokens=7 if sent == 0 else None,
                cached_tokens=0 if sent == 0 else None,
            )
            by_conn.setdefault(ident, []).append(out)
        for ident, outs in by_conn.items():
            sock.send_multipart([ident, wire.encode(wire.Step(outs=outs))])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--text-file", required=True)
    args = p.parse_args()
    serve(args.listen, args.model_dir, Path(args.text_file).read_text())


if __name__ == "__main__":
    main()
