// Package secrets is the model of placeholder secrets: which secret fills
// which environment variable inside the sandbox, which hosts it may be
// sent to, where its real value comes from (the host environment, a
// command such as pass or gh, or a file such as a sops-nix or agenix
// secret), and the placeholder the sandbox holds instead of it. It parses
// the [secrets] tables of a configuration file, says which project
// settings widen access, resolves sources, makes placeholders, swaps them
// back for the bound hosts (Injector), redacts real values from text, and
// reports each secret's health for doctor.
//
// It never writes a real value anywhere: not to the sandbox, a log, an
// error or a file. It does not terminate TLS or proxy anything (the
// supervisor's proxy calls Injector), and does not decide trust (config
// calls Widenings).
package secrets
