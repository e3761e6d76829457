package broker

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// tokenEndpoint stands in for Anthropic's OAuth token endpoint, with
// single-use refresh tokens: a refresh token works once, and a second
// use is invalid_grant — the case where a rotation the host never
// learns of would log the host out.
type tokenEndpoint struct {
	mu       sync.Mutex
	n        int
	valid    map[string]bool // refresh tokens
	access   map[string]bool // access tokens the API accepts
	refused  int
	requests int
	lastBody map[string]any
}

func tokenOf(kind string, n int) string {
	return fmt.Sprintf("sk-ant-%s01-%s%04d", kind, strings.Repeat("Q", 90), n)
}

func (e *tokenEndpoint) issue() (string, string) {
	e.n++
	a, r := tokenOf("oat", e.n), tokenOf("ort", e.n)
	e.valid[r], e.access[a] = true, true
	return a, r
}

func (e *tokenEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req map[string]any
	json.NewDecoder(r.Body).Decode(&req)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.requests++
	e.lastBody = req
	rt, _ := req["refresh_token"].(string)
	if r.URL.Path != "/v1/oauth/token" || req["grant_type"] != "refresh_token" || !e.valid[rt] {
		e.refused++
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"error":"invalid_grant","error_description":"Refresh token not found or invalid"}`)
		return
	}
	delete(e.valid, rt)
	a, nr := e.issue()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"token_type":"Bearer","access_token":%q,"refresh_token":%q,"expires_in":28800,"scope":"user:inference user:profile"}`, a, nr)
}

func (e *tokenEndpoint) api(w http.ResponseWriter, r *http.Request) {
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	e.mu.Lock()
	ok := e.access[tok]
	e.mu.Unlock()
	if !ok {
		http.Error(w, `{"error":"authentication_error"}`, http.StatusUnauthorized)
		return
	}
	fmt.Fprintf(w, `{"you":%q}`, tok) // echoes the token: masking must hide it
}

type loginFixture struct {
	*fixture
	ep        *tokenEndpoint
	api, auth *origin
	dir       string
	login     *ClaudeLogin
}

func newLoginFixture(t *testing.T) *loginFixture {
	t.Helper()
	ep := &tokenEndpoint{valid: map[string]bool{}, access: map[string]bool{}}
	lf := &loginFixture{ep: ep, dir: t.TempDir()}
	lf.api = startOrigin(t, http.HandlerFunc(ep.api))
	lf.auth = startOriginRoot(t, ep)
	a, r := ep.issue()
	writeCreds(t, lf.dir, a, r, time.Now().Add(time.Hour))
	var err error
	lf.login, err = NewClaudeLogin(LoginOptions{ConfigDir: filepath.Join(lf.dir, ".claude"), APIHosts: []string{lf.api.addr}, TokenHosts: []string{lf.auth.addr}, LockWait: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	lf.fixture = newFixture(t, fixtureOptions{allow: []string{lf.api.addr, lf.auth.addr}, login: lf.login, origins: []*origin{lf.api, lf.auth}})
	return lf
}

func writeCreds(t *testing.T, dir, access, refresh string, exp time.Time) {
	t.Helper()
	os.MkdirAll(filepath.Join(dir, ".claude"), 0o700)
	data := fmt.Sprintf(`{"claudeAiOauth":{"accessToken":%q,"refreshToken":%q,"expiresAt":%d,"scopes":["user:inference","user:profile"],"subscriptionType":"max"},"mcpOAuth":{"srv":{"accessToken":"mcp-secret-token"}}}`,
		access, refresh, exp.UnixMilli())
	if err := os.WriteFile(filepath.Join(dir, ".claude", ".credentials.json"), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (lf *loginFixture) hostCreds(t *testing.T) map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(lf.dir, ".claude", ".credentials.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func (lf *loginFixture) apiCall(t *testing.T, c *http.Client, ph string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", "https://"+lf.api.addr+"/custom/api/oauth/profile", nil)
	req.Header.Set("Authorization", "Bearer "+ph)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("API: %s %s", resp.Status, body)
	}
	return string(body)
}

// refresh is what Claude Code inside sends when its copy nears expiry.
func (lf *loginFixture) refresh(t *testing.T, c *http.Client, prt string) (int, map[string]any, string) {
	t.Helper()
	body := fmt.Sprintf(`{"grant_type":"refresh_token","refresh_token":%q,"client_id":"9d1c250a-e61b-44d9-88ed-5944d1962f5e","scope":"user:inference user:profile"}`, prt)
	resp, err := c.Post("https://"+lf.auth.addr+"/v1/oauth/token", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	json.Unmarshal(raw, &m)
	return resp.StatusCode, m, string(raw)
}

func TestClaudeLoginPlaceholdersAndRefresh(t *testing.T) {
	lf := newLoginFixture(t)
	c := lf.goClient(t)

	// The sandbox's copy: placeholders, the login's other fields, and
	// nothing else of the host's file.
	copyJSON, err := lf.login.SandboxCredentials()
	if err != nil {
		t.Fatal(err)
	}
	var inside struct {
		OAuth map[string]any `json:"claudeAiOauth"`
	}
	json.Unmarshal(copyJSON, &inside)
	pa, _ := inside.OAuth["accessToken"].(string)
	pr, _ := inside.OAuth["refreshToken"].(string)
	if !strings.HasPrefix(pa, "sk-ant-oat01-") || !strings.HasPrefix(pr, "sk-ant-ort01-") || pa == tokenOf("oat", 1) ||
		inside.OAuth["subscriptionType"] != "max" || strings.Contains(string(copyJSON), "mcp") || strings.Contains(string(copyJSON), "QQQQ") {
		t.Fatalf("sandbox copy: %s", copyJSON)
	}

	// An API call with the placeholder reaches the API with the host's token.
	if got := lf.apiCall(t, c, pa); got != `{"you":"`+pa+`"}` {
		t.Errorf("API answer (masked): %s", got)
	}

	// The sandbox refreshes: the endpoint gets the host's refresh token,
	// the host's file gets the new tokens, the sandbox its placeholders.
	code, ans, raw := lf.refresh(t, c, pr)
	if code != 200 || ans["access_token"] != pa || ans["refresh_token"] != pr || strings.Contains(raw, "QQQQ") {
		t.Fatalf("refresh answer: %d %s", code, raw)
	}
	if lf.ep.lastBody["refresh_token"] != tokenOf("ort", 1) || lf.ep.lastBody["client_id"] == nil {
		t.Errorf("the endpoint got %v", lf.ep.lastBody)
	}
	host := lf.hostCreds(t)
	oauth := host["claudeAiOauth"].(map[string]any)
	if oauth["accessToken"] != tokenOf("oat", 2) || oauth["refreshToken"] != tokenOf("ort", 2) || oauth["subscriptionType"] != "max" || host["mcpOAuth"] == nil {
		t.Errorf("host file after the sandbox's refresh: %v", host)
	}
	if exp := int64(oauth["expiresAt"].(float64)); exp < time.Now().Add(7*time.Hour).UnixMilli() {
		t.Errorf("expiresAt %d", exp)
	}
	if st, _ := os.Stat(lf.login.Path()); st.Mode().Perm() != 0o600 {
		t.Errorf("host file mode %v", st.Mode())
	}
	lf.apiCall(t, c, pa)

	// A session on the host refreshes by itself (with the rotated token
	// the broker wrote), and writes the file as Claude Code does.
	lf.ep.mu.Lock()
	delete(lf.ep.valid, tokenOf("ort", 2))
	a3, r3 := lf.ep.issue()
	delete(lf.ep.access, tokenOf("oat", 1))
	delete(lf.ep.access, tokenOf("oat", 2))
	lf.ep.mu.Unlock()
	time.Sleep(10 * time.Millisecond) // a new mtime
	writeCreds(t, lf.dir, a3, r3, time.Now().Add(8*time.Hour))
	if got := lf.apiCall(t, c, pa); got != `{"you":"`+pa+`"}` {
		t.Errorf("after the host's refresh: %s", got)
	}
	// The sandbox's copy still says its old expiry and refreshes: it is
	// given the new expiry, and nothing is rotated.
	before := lf.ep.requests
	code, ans, _ = lf.refresh(t, c, pr)
	if code != 200 || ans["access_token"] != pa || lf.ep.requests != before {
		t.Errorf("refresh after the host's: %d %v, endpoint asked %d times", code, ans, lf.ep.requests-before)
	}
	if exp, _ := ans["expires_in"].(float64); exp < 7*3600 {
		t.Errorf("expires_in %v", ans["expires_in"])
	}
	// A forced refresh (after a 401) does rotate, with the host's token.
	code, _, raw = lf.refresh(t, c, pr)
	if code != 200 || lf.ep.lastBody["refresh_token"] != r3 {
		t.Errorf("forced refresh: %d %s, endpoint got %v", code, raw, lf.ep.lastBody["refresh_token"])
	}
	if lf.ep.refused != 0 {
		t.Errorf("the endpoint refused %d refresh tokens: a rotation was lost", lf.ep.refused)
	}
	if oauth := lf.hostCreds(t)["claudeAiOauth"].(map[string]any); oauth["refreshToken"] != tokenOf("ort", lf.ep.n) {
		t.Errorf("host file holds %v, the endpoint's live token is %s", oauth["refreshToken"], tokenOf("ort", lf.ep.n))
	}
	// Another client's token request (a new login's code exchange) goes
	// out as it came.
	code, _, _ = lf.refresh(t, c, "sk-ant-ort01-somethingelse")
	if code != 400 || lf.ep.lastBody["refresh_token"] != "sk-ant-ort01-somethingelse" {
		t.Errorf("a foreign refresh: %d %v", code, lf.ep.lastBody)
	}
	if text := lf.log.text(); strings.Contains(text, "QQQQ") || !strings.Contains(text, "written to") {
		t.Errorf("log:\n%s", text)
	}
}

// The broker waits for a host session that holds Claude Code's lock, and
// takes over a lock its holder left behind.
func TestClaudeLoginRespectsTheHostLock(t *testing.T) {
	lf := newLoginFixture(t)
	c := lf.goClient(t)
	var inside struct {
		OAuth map[string]string `json:"claudeAiOauth"`
	}
	copyJSON, _ := lf.login.SandboxCredentials()
	json.Unmarshal(copyJSON, &inside)
	pr := inside.OAuth["refreshToken"]

	lock := filepath.Join(lf.dir, ".claude.lock")
	if err := os.Mkdir(lock, 0o755); err != nil {
		t.Fatal(err)
	}
	released := make(chan time.Time, 1)
	go func() {
		time.Sleep(1500 * time.Millisecond)
		released <- time.Now()
		os.Remove(lock)
	}()
	code, _, raw := lf.refresh(t, c, pr)
	done := time.Now()
	if code != 200 {
		t.Fatalf("refresh: %d %s", code, raw)
	}
	if at := <-released; done.Before(at) {
		t.Error("the refresh did not wait for the host's lock")
	}
	if _, err := os.Stat(lock); !os.IsNotExist(err) {
		t.Error("the broker left the lock behind")
	}

	// A lock untouched for longer than proper-lockfile's stale time.
	os.Mkdir(lock, 0o755)
	old := time.Now().Add(-time.Minute)
	os.Chtimes(lock, old, old)
	start := time.Now()
	if code, _, raw := lf.refresh(t, c, pr); code != 200 {
		t.Fatalf("refresh over a stale lock: %d %s", code, raw)
	}
	if time.Since(start) > 5*time.Second {
		t.Error("a stale lock was waited for")
	}
}

func TestClaudeLoginMissing(t *testing.T) {
	_, err := NewClaudeLogin(LoginOptions{ConfigDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("%v", err)
	}
}
