package broker

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httputil"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/claude-sandbox/claude-sandbox/egress"
	"github.com/claude-sandbox/claude-sandbox/internal/atomicfile"
	"github.com/claude-sandbox/claude-sandbox/internal/streamreplace"
	"github.com/claude-sandbox/claude-sandbox/secrets"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
)

// Claude Code's login on Linux (read from Claude Code 2.1.197): its
// OAuth tokens are in $CLAUDE_CONFIG_DIR/.credentials.json (default
// ~/.claude), mode 0600, as
//
//	{"claudeAiOauth": {"accessToken": "sk-ant-oat01-…", "refreshToken": "sk-ant-ort01-…",
//	  "expiresAt": <ms since the epoch>, "scopes": [...], "subscriptionType": …}, …}
//
// It sends the access token as "Authorization: Bearer" to
// api.anthropic.com. Five minutes before expiresAt (or after a 401) it
// refreshes: under a lock (proper-lockfile on ~/.claude/.oauth_refresh.lock
// and on <realpath ~/.claude>.lock), after reading the file again (a
// changed access token there means another process refreshed: it uses
// that), it POSTs {"grant_type": "refresh_token", "refresh_token", "client_id",
// "scope"} as JSON to https://platform.claude.com/v1/oauth/token and saves
// access_token, refresh_token (the old one when absent) and expires_in.
// A refresh answered invalid_grant clears the tokens in the file unless
// the file has changed meanwhile. The file is written to a temporary
// file and renamed, and copied in place when the rename fails (a file
// bound over it).
//
// ClaudeLogin keeps that login outside: the sandbox gets a copy of the
// file holding placeholders; the broker puts the host's current access
// token into requests to the API hosts, performs the sandbox's refresh
// with the host's current refresh token under the host's lock, writes the
// new tokens to the host's file (so no rotation is lost to the host), and
// answers the sandbox with its placeholders again.

// LoginSecretName names the login in the session log.
const LoginSecretName = "claude-login"

// Default hosts of Claude Code's login: where the access token is sent,
// and where it is refreshed (platform.claude.com in current versions,
// console.anthropic.com in earlier ones).
var (
	DefaultLoginAPIHosts   = []string{"api.anthropic.com"}
	DefaultLoginTokenHosts = []string{"platform.claude.com", "console.anthropic.com"}
)

// tokenPath is the refresh endpoint's path on the token hosts.
const tokenPath = "/v1/oauth/token"

// refreshMargin: Claude Code refreshes this long before expiry.
const refreshMargin = 5 * time.Minute

// LoginOptions configure NewClaudeLogin.
type LoginOptions struct {
	// ConfigDir is Claude Code's directory on the host: $CLAUDE_CONFIG_DIR,
	// else ~/.claude.
	ConfigDir string
	// APIHosts and TokenHosts (host or host:port; nil: the defaults).
	APIHosts, TokenHosts []string
	// LockWait bounds the wait for a host session's refresh lock (15s).
	LockWait time.Duration
}

// ErrNoLogin: the host has no Claude Code login to keep outside.
var ErrNoLogin = errors.New("no Claude Code login on this machine")

// ClaudeLogin is Claude Code's login, kept outside the sandbox.
type ClaudeLogin struct {
	credPath   string
	lockPath   string
	apiHosts   []secrets.HostPattern
	tokenHosts []secrets.HostPattern
	lockWait   time.Duration

	accessPH, refreshPH string

	mu        sync.Mutex
	access    hiddenValue
	refresh   hiddenValue
	expiresAt int64 // ms
	scopes    []string
	issued    hiddenValue // the access token the sandbox's expiry was last set for
	stamp     fileStamp
	seen      []seenValue // every real token of this run, for masking

	refreshing sync.Mutex
}

// hiddenValue is a real token: printing it shows nothing.
type hiddenValue string

func (hiddenValue) String() string   { return "[hidden]" }
func (hiddenValue) GoString() string { return `"[hidden]"` }

type seenValue struct {
	value       hiddenValue
	placeholder string
}

type fileStamp struct {
	mtime time.Time
	size  int64
	ino   uint64
}

// NewClaudeLogin reads the host's login and makes its placeholders.
func NewClaudeLogin(opts LoginOptions) (*ClaudeLogin, error) {
	if opts.ConfigDir == "" {
		return nil, errors.New("broker: Claude Code's config directory is not known")
	}
	l := &ClaudeLogin{
		credPath: filepath.Join(opts.ConfigDir, ".credentials.json"),
		lockWait: opts.LockWait,
	}
	if l.lockWait <= 0 {
		l.lockWait = 15 * time.Second
	}
	// Claude Code's own lock is <realpath of the directory>.lock.
	dir := opts.ConfigDir
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	l.lockPath = filepath.Clean(dir) + ".lock"
	var err error
	if l.apiHosts, err = parseHosts(opts.APIHosts, DefaultLoginAPIHosts); err != nil {
		return nil, err
	}
	if l.tokenHosts, err = parseHosts(opts.TokenHosts, DefaultLoginTokenHosts); err != nil {
		return nil, err
	}
	creds, err := l.read()
	if err != nil {
		return nil, err
	}
	if creds.access == "" || creds.refresh == "" {
		return nil, fmt.Errorf("%w: %s has no OAuth tokens (log in with `claude` on the host)", ErrNoLogin, l.credPath)
	}
	if l.accessPH, err = secrets.NewPlaceholder(string(creds.access), ""); err != nil {
		return nil, err
	}
	if l.refreshPH, err = secrets.NewPlaceholder(string(creds.refresh), ""); err != nil {
		return nil, err
	}
	l.adopt(creds)
	l.issued = creds.access
	return l, nil
}

func parseHosts(given, def []string) ([]secrets.HostPattern, error) {
	if given == nil {
		given = def
	}
	var out []secrets.HostPattern
	for _, h := range given {
		p, err := secrets.ParseHost(h)
		if err != nil {
			return nil, fmt.Errorf("broker: Claude Code login host: %w", err)
		}
		out = append(out, p)
	}
	return out, nil
}

// Hosts are the login's hosts without ports (for NewCA).
func (l *ClaudeLogin) Hosts() []string {
	if l == nil {
		return nil
	}
	var out []string
	for _, p := range append(append([]secrets.HostPattern(nil), l.apiHosts...), l.tokenHosts...) {
		if !contains(out, p.Host()) {
			out = append(out, p.Host())
		}
	}
	return out
}

// Path is the host's credentials file.
func (l *ClaudeLogin) Path() string { return l.credPath }

// credentials are the parts of the file the broker uses.
type credentials struct {
	access, refresh hiddenValue
	expiresAt       int64
	scopes          []string
	oauth           map[string]any // the whole claudeAiOauth object
	stamp           fileStamp
}

// maxCredentials bounds the file: it holds a few tokens.
const maxCredentials = 1 << 20

func (l *ClaudeLogin) read() (credentials, error) {
	f, err := os.Open(l.credPath)
	if errors.Is(err, fs.ErrNotExist) {
		return credentials{}, fmt.Errorf("%w: %s does not exist (log in with `claude` on the host)", ErrNoLogin, l.credPath)
	}
	if err != nil {
		return credentials{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return credentials{}, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxCredentials))
	if err != nil {
		return credentials{}, err
	}
	var file struct {
		OAuth map[string]any `json:"claudeAiOauth"`
	}
	if err := json.Unmarshal(data, &file); err != nil {
		return credentials{}, fmt.Errorf("%s is not JSON Claude Code wrote: %v", l.credPath, err)
	}
	c := credentials{oauth: file.OAuth, stamp: stampOf(st)}
	if file.OAuth == nil {
		return c, nil
	}
	s, _ := file.OAuth["accessToken"].(string)
	c.access = hiddenValue(s)
	s, _ = file.OAuth["refreshToken"].(string)
	c.refresh = hiddenValue(s)
	if n, ok := file.OAuth["expiresAt"].(float64); ok {
		c.expiresAt = int64(n)
	}
	if list, ok := file.OAuth["scopes"].([]any); ok {
		for _, v := range list {
			if s, ok := v.(string); ok {
				c.scopes = append(c.scopes, s)
			}
		}
	}
	return c, nil
}

func stampOf(st fs.FileInfo) fileStamp {
	s := fileStamp{mtime: st.ModTime(), size: st.Size()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		s.ino = sys.Ino
	}
	return s
}

// adopt makes c the current login. Called with l.mu held, or before l
// is shared.
func (l *ClaudeLogin) adopt(c credentials) {
	l.access, l.refresh, l.expiresAt, l.scopes, l.stamp = c.access, c.refresh, c.expiresAt, c.scopes, c.stamp
	l.remember(c.access, l.accessPH)
	l.remember(c.refresh, l.refreshPH)
}

func (l *ClaudeLogin) remember(v hiddenValue, placeholder string) {
	if v == "" {
		return
	}
	for _, s := range l.seen {
		if s.value == v {
			return
		}
	}
	l.seen = append(l.seen, seenValue{v, placeholder})
}

// current re-reads the host's file when it has changed (a session on the
// host refreshed, or logged out), so the sandbox always uses the host's
// present login. Called with l.mu held.
func (l *ClaudeLogin) current() {
	st, err := os.Stat(l.credPath)
	if err == nil && stampOf(st) == l.stamp {
		return
	}
	c, err := l.read()
	if err != nil {
		c = credentials{} // gone: nothing to put in
	}
	l.adopt(c)
}

// SandboxCredentials is the .credentials.json the sandbox gets: the
// host's login object with placeholders for both tokens, and nothing else
// of the file (it may hold MCP servers' OAuth tokens). Write it with mode
// 0600 to a file the sandbox may rewrite (Claude Code saves its refreshed
// placeholders and expiry there).
func (l *ClaudeLogin) SandboxCredentials() ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.current()
	c, err := l.read()
	if err != nil {
		return nil, err
	}
	oauth := map[string]any{}
	for k, v := range c.oauth {
		oauth[k] = v
	}
	oauth["accessToken"] = l.accessPH
	oauth["refreshToken"] = l.refreshPH
	return json.Marshal(map[string]any{"claudeAiOauth": oauth})
}

// bound says whether the login's tokens may go to host:port.
func (l *ClaudeLogin) bound(host string, port int) bool {
	if l == nil {
		return false
	}
	return matchAny(l.apiHosts, host, port) || matchAny(l.tokenHosts, host, port)
}

func matchAny(ps []secrets.HostPattern, host string, port int) bool {
	for _, p := range ps {
		if p.Matches(host, port) {
			return true
		}
	}
	return false
}

// header puts the host's current access token in place of its
// placeholder.
func (l *ClaudeLogin) header(v string) (string, bool) {
	if l == nil || !strings.Contains(v, l.accessPH) {
		return v, false
	}
	l.mu.Lock()
	l.current()
	access := l.access
	l.mu.Unlock()
	if access == "" {
		return v, false // logged out on the host: the placeholder fails as it should
	}
	return strings.ReplaceAll(v, l.accessPH, string(access)), true
}

// maskString replaces every real token of this run with its placeholder.
func (l *ClaudeLogin) maskString(s string) string {
	if l == nil {
		return s
	}
	for _, sv := range l.seenValues() {
		s = strings.ReplaceAll(s, string(sv.value), sv.placeholder)
	}
	return s
}

func (l *ClaudeLogin) maskReader(r io.Reader) io.Reader {
	if l == nil {
		return r
	}
	var pairs []streamreplace.Pair
	for _, sv := range l.seenValues() {
		pairs = append(pairs, streamreplace.Pair{Old: []byte(string(sv.value)), New: []byte(sv.placeholder)})
	}
	return streamreplace.NewReader(r, pairs)
}

func (l *ClaudeLogin) maskKeepsLength() bool {
	if l == nil {
		return true
	}
	for _, sv := range l.seenValues() {
		if len(sv.value) != len(sv.placeholder) {
			return false
		}
	}
	return true
}

func (l *ClaudeLogin) seenValues() []seenValue {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]seenValue(nil), l.seen...)
}

// isRefresh: a POST to the token endpoint on a token host.
func (l *ClaudeLogin) isRefresh(host string, port int, r *http.Request) bool {
	return l != nil && r.Method == http.MethodPost && r.URL.Path == tokenPath && matchAny(l.tokenHosts, host, port)
}

// maxTokenBody bounds a token request or answer.
const maxTokenBody = 64 << 10

// serveRefresh performs the sandbox's refresh of the login on its behalf.
func (l *ClaudeLogin) serveRefresh(w http.ResponseWriter, r *http.Request, ic *interception, rp *httputil.ReverseProxy, tr http.RoundTripper) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxTokenBody+1))
	r.Body.Close()
	if err != nil || len(body) > maxTokenBody {
		egress.PlainError(w, http.StatusBadRequest, "claude-sandbox: a token request must be under 64 KiB")
		return
	}
	var req map[string]any
	if json.Unmarshal(body, &req) != nil || req["grant_type"] != "refresh_token" || req["refresh_token"] != l.refreshPH {
		// Not the login's refresh (a new login's code exchange, another
		// client): it goes out as it came, with nothing put in.
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		rp.ServeHTTP(w, r)
		return
	}

	l.refreshing.Lock()
	defer l.refreshing.Unlock()
	ctx, cancel := context.WithTimeout(r.Context(), l.lockWait)
	release, err := hostLock(ctx, l.lockPath)
	cancel()
	if err != nil {
		l.note(ic, "the host's Claude Code lock "+l.lockPath+" stayed taken ("+err.Error()+"); the sandbox will try again")
		oauthError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "claude-sandbox: Claude Code on this machine is refreshing its login; try again")
		return
	}
	defer release()

	l.mu.Lock()
	l.current()
	access, refresh, expiresAt, scopes, issued := l.access, l.refresh, l.expiresAt, l.scopes, l.issued
	l.mu.Unlock()
	now := time.Now()
	if refresh == "" {
		l.note(ic, "the sandbox asked to refresh Claude Code's login, but "+l.credPath+" has no login; log in on the host")
		oauthError(w, http.StatusBadRequest, "invalid_grant", "claude-sandbox: Claude Code on this machine is logged out; log in with `claude` on the host")
		return
	}
	if access != issued && time.UnixMilli(expiresAt).Sub(now) > refreshMargin {
		// A session on the host refreshed since: the sandbox only needs
		// the new expiry, and the token is not rotated again.
		l.mu.Lock()
		l.issued = access
		l.mu.Unlock()
		l.answer(w, ic, http.StatusOK, http.Header{"Content-Type": {"application/json"}}, l.tokenAnswer(expiresAt, scopes, now))
		l.logRefresh(ic, "Claude Code's login: the host had refreshed it already; the sandbox was given its new expiry")
		return
	}

	req["refresh_token"] = string(refresh)
	out, _ := json.Marshal(req)
	outReq, err := http.NewRequestWithContext(r.Context(), http.MethodPost, "https://"+hostHeader(ic.target)+tokenPath, bytes.NewReader(out))
	if err != nil {
		ic.upstreamError(w, r, err)
		return
	}
	for k, vs := range r.Header {
		switch http.CanonicalHeaderKey(k) {
		case "Content-Length", "Connection", "Keep-Alive", "Transfer-Encoding", "Te", "Trailer", "Upgrade", "Proxy-Connection", "Proxy-Authorization":
			continue
		}
		outReq.Header[k] = vs
	}
	outReq.Header.Set("Accept-Encoding", "identity")
	resp, err := tr.RoundTrip(outReq)
	if err != nil {
		ic.upstreamError(w, r, err)
		return
	}
	defer resp.Body.Close()
	var rbody io.Reader = resp.Body
	if strings.EqualFold(resp.Header.Get("Content-Encoding"), "gzip") {
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			ic.upstreamError(w, r, err)
			return
		}
		rbody = zr
		resp.Header.Del("Content-Encoding")
	}
	answer, err := io.ReadAll(io.LimitReader(rbody, maxTokenBody))
	if err != nil {
		ic.upstreamError(w, r, err)
		return
	}
	var tok struct {
		AccessToken  string  `json:"access_token"`
		RefreshToken string  `json:"refresh_token"`
		ExpiresIn    float64 `json:"expires_in"`
		Scope        string  `json:"scope"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(answer, &tok) != nil || tok.AccessToken == "" {
		l.note(ic, fmt.Sprintf("the token endpoint answered the sandbox's refresh of Claude Code's login with %s; passed on", resp.Status))
		l.answer(w, ic, resp.StatusCode, resp.Header, answer)
		return
	}
	next := credentials{access: hiddenValue(tok.AccessToken), refresh: hiddenValue(tok.RefreshToken), scopes: scopes,
		expiresAt: now.Add(time.Duration(tok.ExpiresIn * float64(time.Second))).UnixMilli()}
	if next.refresh == "" {
		next.refresh = refresh // not rotated: Claude Code keeps the old one too
	}
	if tok.Scope != "" {
		next.scopes = strings.Fields(tok.Scope)
	}
	l.mu.Lock()
	l.remember(next.access, l.accessPH)
	l.remember(next.refresh, l.refreshPH)
	werr := l.writeHost(next)
	if werr == nil {
		if st, err := os.Stat(l.credPath); err == nil {
			next.stamp = stampOf(st)
		}
	}
	l.access, l.refresh, l.expiresAt, l.scopes, l.stamp, l.issued = next.access, next.refresh, next.expiresAt, next.scopes, next.stamp, next.access
	l.mu.Unlock()
	if werr != nil {
		l.note(ic, "Claude Code's login was refreshed, but "+l.credPath+" could not be updated ("+werr.Error()+
			"): the sandbox keeps working; Claude Code on the host will ask you to log in again")
	} else {
		l.logRefresh(ic, "Claude Code's login refreshed for the sandbox; the new tokens were written to "+l.credPath)
	}
	l.answer(w, ic, resp.StatusCode, resp.Header, answer)
}

// tokenAnswer is a token endpoint's answer carrying the placeholders.
func (l *ClaudeLogin) tokenAnswer(expiresAt int64, scopes []string, now time.Time) []byte {
	b, _ := json.Marshal(map[string]any{
		"token_type":    "Bearer",
		"access_token":  l.accessPH,
		"refresh_token": l.refreshPH,
		"expires_in":    int64(time.UnixMilli(expiresAt).Sub(now) / time.Second),
		"scope":         strings.Join(scopes, " "),
	})
	return b
}

// answer sends a token endpoint's answer into the sandbox, masked.
func (l *ClaudeLogin) answer(w http.ResponseWriter, ic *interception, status int, h http.Header, body []byte) {
	masked := []byte(l.maskString(string(ic.b.opts.Secrets.Mask(body))))
	for k, vs := range h {
		switch http.CanonicalHeaderKey(k) {
		case "Content-Length", "Connection", "Keep-Alive", "Transfer-Encoding", "Content-Encoding":
			continue
		}
		for _, v := range vs {
			w.Header().Add(k, l.maskString(string(ic.b.opts.Secrets.Mask([]byte(v)))))
		}
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(masked)))
	w.WriteHeader(status)
	_, _ = w.Write(masked)
}

func oauthError(w http.ResponseWriter, status int, code, desc string) {
	b, _ := json.Marshal(map[string]string{"error": code, "error_description": desc})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeHost puts tokens into the host's file the way Claude Code does:
// the claudeAiOauth object updated, every other key kept, written to a
// temporary file and renamed, mode 0600. Called under the host's lock.
func (l *ClaudeLogin) writeHost(c credentials) error {
	data, err := os.ReadFile(l.credPath)
	if err != nil {
		return err
	}
	var file map[string]json.RawMessage
	if err := json.Unmarshal(data, &file); err != nil {
		return err
	}
	oauth := map[string]any{}
	if raw, ok := file["claudeAiOauth"]; ok {
		if err := json.Unmarshal(raw, &oauth); err != nil {
			return err
		}
	}
	oauth["accessToken"] = string(c.access)
	oauth["refreshToken"] = string(c.refresh)
	oauth["expiresAt"] = c.expiresAt
	if c.scopes != nil {
		oauth["scopes"] = c.scopes
	}
	raw, err := json.Marshal(oauth)
	if err != nil {
		return err
	}
	file["claudeAiOauth"] = raw
	out, err := json.MarshalIndent(file, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(l.credPath, out, 0o600)
}

func (l *ClaudeLogin) note(ic *interception, reason string) {
	ic.b.log.Log(sessionlog.Entry{Service: "secret", Decision: sessionlog.Note, Op: "refresh", Target: ic.target,
		Rule: `claude-login = "placeholder"`, Reason: reason})
}

func (l *ClaudeLogin) logRefresh(ic *interception, reason string) {
	ic.b.substituted.Add(1)
	ic.b.log.Log(sessionlog.Entry{Service: "secret", Decision: sessionlog.Allow, Op: "refresh", Target: ic.target,
		Rule: `claude-login = "placeholder"`, Reason: reason})
}
