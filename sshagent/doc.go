// Package sshagent is the filtering SSH agent a sandbox's supervisor
// serves in place of the host agent: the sandbox sees a socket that speaks
// the agent protocol, lists only the host agent's keys the configuration
// allows (ssh-keys), signs only with those, forwards OpenSSH's
// session-bind so the host agent keeps enforcing destination constraints,
// and refuses everything that would change the host agent (adding,
// removing, locking keys, smartcards, other extensions). Every signature
// and every refusal is one session-log entry.
//
// It owns the agent protocol on both sockets and the ssh-keys rules. It
// never holds a private key, never changes the host agent, and does not
// decide where its socket is bound or which host agent it talks to (the
// supervisor does).
package sshagent
