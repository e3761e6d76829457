package dirs

import "testing"

func TestBaseDirectories(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	home := env(map[string]string{"HOME": "/home/u"})
	for _, c := range []struct {
		name string
		fn   func(func(string) string) (string, error)
		want string
	}{
		{"cache", Cache, "/home/u/.cache/claude-sandbox"},
		{"state", State, "/home/u/.local/state/claude-sandbox"},
		{"config", Config, "/home/u/.config/claude-sandbox"},
	} {
		if got, err := c.fn(home); err != nil || got != c.want {
			t.Errorf("%s = %q, %v; want %q", c.name, got, err, c.want)
		}
	}
	xdg := env(map[string]string{"HOME": "/home/u", "XDG_CACHE_HOME": "/c", "XDG_STATE_HOME": "relative/ignored", "XDG_CONFIG_HOME": "/cfg"})
	if got, _ := Cache(xdg); got != "/c/claude-sandbox" {
		t.Errorf("cache = %q", got)
	}
	if got, _ := State(xdg); got != "/home/u/.local/state/claude-sandbox" {
		t.Errorf("a relative XDG_STATE_HOME was used: %q", got)
	}
	if got, _ := Config(xdg); got != "/cfg/claude-sandbox" {
		t.Errorf("config = %q", got)
	}
	t.Setenv("HOME", "")
	if _, err := State(env(nil)); err == nil {
		t.Error("no HOME and no XDG_STATE_HOME, yet a state directory")
	}
}
