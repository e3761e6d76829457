// Package broker is the credential broker's TLS side: a certificate
// authority made for one sandbox run (in memory, name constrained to the
// hosts secrets are bound to), the trust files that make the sandbox's
// clients accept it, and the egress proxy's interceptor that terminates
// TLS for those hosts only, puts real values in place of placeholders,
// forwards to the real host over verified TLS, and masks real values in
// what comes back. It also keeps Claude Code's OAuth login outside the
// sandbox (ClaudeLogin).
//
// It never writes a private key or a real value anywhere but to the real
// host (and, for Claude Code's login, the host's own credentials file),
// and logs names, never values. It does not decide which hosts a secret
// may reach (package secrets), which connections are allowed (package
// egress), or what is mounted into a sandbox (the launcher).
package broker
