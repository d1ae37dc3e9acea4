# Sourced by the GPU-machine scripts (from the repository root): the packages carried in .whl
# installed under /tmp/site (no index, no dependencies), and the repository's Python code on the
# path with the router extension from the glm47 wheel beside it. Without .whl, the repository's
# Python code alone.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
    || echo "wheel install failed"
  if [ -f /tmp/site/glm47/_native.abi3.so ]; then
    cp /tmp/site/glm47/_native.abi3.so python/glm47/ && rm -rf /tmp/site/glm47 /tmp/site/glm47-*
  fi
  export PYTHONPATH=$PWD/python:/tmp/site PATH=/tmp/site/bin:$PATH
fi
