# Sourced by scripts that need a link to send on: a veth pair with one end ($outside) in this
# namespace and the other ($inside) in a namespace of its own ($ns), both up, IPv6 off and no
# addresses, so nothing but what the script sends crosses it. Needs root.
#   veth_up NS INSIDE OUTSIDE     make it
#   veth_down NS OUTSIDE          remove it (safe to call twice, or for a pair never made)
veth_up() {
  ip netns add "$1"
  ip link add name "$3" type veth peer name "$2" netns "$1"
  sysctl -qw "net.ipv6.conf.$3.disable_ipv6=1"
  ip netns exec "$1" sysctl -qw "net.ipv6.conf.$2.disable_ipv6=1"
  ip link set dev "$3" up
  ip -n "$1" link set dev "$2" up
}
veth_down() {
  ip netns del "$1" 2>/dev/null || true
  ip link del "$2" 2>/dev/null || true
}
