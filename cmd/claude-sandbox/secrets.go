package main

import (
	"fmt"

	"github.com/claude-sandbox/claude-sandbox/config"
	"github.com/claude-sandbox/claude-sandbox/secrets"
)

// secretBindings are the secrets a launch binds: the built-ins, then the
// user's [secrets], then a trusted project's (an untrusted one that
// widens never got this far).
func (a *app) secretBindings(ghToken bool) ([]secrets.Binding, error) {
	var layers []*secrets.Config
	if st := a.cfg.state; st != nil && !a.cfg.noConfig {
		layers = append(layers, config.SecretsOf(st.user))
		if !st.projectIgnored {
			layers = append(layers, config.SecretsOf(st.project))
		}
	}
	return secrets.Effective(ghToken, layers...)
}

// warn prints a one-line warning whether or not a terminal is there: a
// secret that is not set inside is something the person must hear of.
func (a *app) warn(msg string) {
	if a.opts.LogFormat == "json" {
		a.log.Warn().Msg(msg)
		return
	}
	fmt.Fprintf(a.stderr, "claude-sandbox: warning: %s\n", msg)
}
