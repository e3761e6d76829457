package broker

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
	"github.com/claude-sandbox/claude-sandbox/secrets"
)

// claudeCodeBinary is the real Claude Code the suite installs from npm.
const claudeCodeBinary = "/opt/claude-sandbox-ci/node_modules/@anthropic-ai/claude-code-linux-x64/claude"

// Claude Code itself (a Bun program: NODE_EXTRA_CA_CERTS, HTTPS_PROXY)
// reaches its API host through the broker with a placeholder key, and
// the stand-in API receives the real one.
func TestClaudeCodeWithPlaceholderKey(t *testing.T) {
	if _, err := os.Stat(claudeCodeBinary); err != nil {
		testenv.Require(t, false, "Claude Code is not installed at "+claudeCodeBinary+" (tests/run.sh installs it)")
	}
	var mu sync.Mutex
	var keys []string
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		keys = append(keys, r.Header.Get("X-Api-Key"))
		mu.Unlock()
		if r.URL.Path != "/v1/messages" {
			http.NotFound(w, r)
			return
		}
		var req struct {
			Stream bool `json:"stream"`
			Model  string
		}
		body, _ := io.ReadAll(r.Body)
		json.Unmarshal(body, &req)
		msg := map[string]any{"id": "msg_1", "type": "message", "role": "assistant", "model": req.Model,
			"content": []any{}, "stop_reason": nil, "usage": map[string]int{"input_tokens": 1, "output_tokens": 1}}
		if !req.Stream {
			msg["content"] = []any{map[string]string{"type": "text", "text": "pong"}}
			msg["stop_reason"] = "end_turn"
			json.NewEncoder(w).Encode(msg)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		ev := func(name string, v any) {
			b, _ := json.Marshal(v)
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", name, b)
			w.(http.Flusher).Flush()
		}
		ev("message_start", map[string]any{"type": "message_start", "message": msg})
		ev("content_block_start", map[string]any{"type": "content_block_start", "index": 0, "content_block": map[string]string{"type": "text", "text": ""}})
		ev("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0, "delta": map[string]string{"type": "text_delta", "text": "pong"}})
		ev("content_block_stop", map[string]any{"type": "content_block_stop", "index": 0})
		ev("message_delta", map[string]any{"type": "message_delta", "delta": map[string]any{"stop_reason": "end_turn"}, "usage": map[string]int{"output_tokens": 1}})
		ev("message_stop", map[string]any{"type": "message_stop"})
	})
	o := startOriginRoot(t, api)
	// The stand-in by name (its certificate's name, example.com, which
	// the proxy resolves to loopback), as Claude Code reaches its API host.
	host := "example.com:" + o.addr[strings.LastIndexByte(o.addr, ':')+1:]
	f := newFixture(t, fixtureOptions{
		allow:         []string{host, o.addr},
		bindings:      []secrets.Binding{envBinding(t, "ANTHROPIC_API_KEY", false, host)},
		values:        map[string]string{"ANTHROPIC_API_KEY": realKey},
		origins:       []*origin{o},
		loopbackNames: []string{"example.com"},
	})
	ph := f.placeholder(t, "ANTHROPIC_API_KEY")
	out, err := f.run(t, []string{"ANTHROPIC_API_KEY=" + ph, "ANTHROPIC_BASE_URL=https://" + host,
		"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1", "DISABLE_AUTOUPDATER=1", "CI=1"},
		claudeCodeBinary, "-p", "ping", "--max-turns", "1")
	mu.Lock()
	defer mu.Unlock()
	if err != nil || !strings.Contains(out, "pong") {
		t.Fatalf("claude -p: %v\n%s\nkeys seen: %d\n%s", err, out, len(keys), f.log.text())
	}
	for _, k := range keys {
		if k != realKey {
			t.Errorf("the API got x-api-key %q, want the real value", k)
		}
	}
	assertClean(t, "claude", out)
}
