// Package launch is the launch core: the facade commands call and the
// contract backends implement (Backend), like database/sql and its driver.
//
// It owns every decision that is the same whatever runs the sandbox: the
// flow (Launch: check → plan → claim → start or join → unregister), the
// typed plan (Plan, Mount: what the sandbox sees, its environment and
// program, and what the host must have first), the environment policy
// (one table: what crosses, what --dry-run shows, what --sudo keeps), host
// forwarding, protect-git, the per-project state layout, the registry of
// running sandboxes, the program to run and the session notice, and the
// host facts doctor reports (user namespaces, KVM, the architecture
// table).
//
// It reads only the manifest and the host and never evaluates Nix. It does
// not know how any one backend works: launch/bubblewrap, launch/container
// and launch/vm render the plan for their mechanism, and launch/backends
// picks one by name (this package cannot import them).
package launch
