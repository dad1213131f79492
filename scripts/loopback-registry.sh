# Sourced by the quick-start scripts: Debian's docker-registry on a free loopback port.
#   start_loopback_registry DIR   -> sets registry_port and registry_pid (the caller stops it);
#                                    storage, config and log under DIR
start_loopback_registry() {
  local dir="$1"
  registry_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$dir"
  cat > "$dir/registry.yml" <<YAML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $dir/storage}}
http: {addr: 127.0.0.1:$registry_port}
YAML
  docker-registry serve "$dir/registry.yml" > "$dir/registry.log" 2>&1 &
  registry_pid=$!
  for _ in $(seq 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$registry_port/v2/', timeout=1)" \
      2>/dev/null && return 0
    sleep 0.1
  done
  echo "the registry did not start: see $dir/registry.log" >&2
  kill "$registry_pid" 2>/dev/null || true
  return 1
}
