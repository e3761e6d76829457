// Package egress is a sandbox's only way out to the network: a proxy that
// speaks HTTP CONNECT, plain HTTP and SOCKS5 on one listener, and the
// policy it enforces (allow and deny rules, the open, allowlist and learn
// modes, the refusal of non-public addresses unless a rule names them).
//
// It owns rule syntax, the decision for each destination (made after
// resolution, and the connection goes to the address that was checked),
// the connection to an upstream proxy, and one session-log entry per
// decision. It does not read configuration files, start or enter a
// sandbox, terminate TLS (an Interceptor may take a tunnel over), or
// decide where its listener lives: the supervisor gives it a listener, a
// policy and a log.
package egress
