# Sourced by the serving benchmarks (from the repository root): `start_serve RES` starts
# `glm47 serve` on the bench model directory at 127.0.0.1:8000 with $SERVE_FLAGS, its log in
# RES/serve.log, sets SERVE_PID, and returns once /health answers (exits with the log's tail if
# the server dies first).
start_serve() {
  local res=$1 t0
  # shellcheck disable=SC2086
  python3 -m glm47.cli serve --model-dir .bench-model --host 127.0.0.1 --port 8000 $SERVE_FLAGS \
    >"$res/serve.log" 2>&1 &
  SERVE_PID=$!
  t0=$(date +%s)
  for _ in $(seq 1 300); do
    curl -sf http://127.0.0.1:8000/health >/dev/null && break
    kill -0 $SERVE_PID 2>/dev/null || { tail -50 "$res/serve.log"; exit 1; }
    sleep 1
  done
  echo "server ready after $(( $(date +%s) - t0 )) s"
}
