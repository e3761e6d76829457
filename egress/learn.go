package egress

import (
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// maxLearned bounds what learn mode remembers: a sandbox that walks
// through millions of names must not exhaust the supervisor's memory.
const maxLearned = 10000

type learnKey struct {
	host string // a normal name, or an address
	port uint16
}

type learnEntry struct {
	tunnel  bool     // reached through CONNECT or SOCKS5: every method
	methods []string // plain HTTP methods seen
	hits    int
	refused bool
	reason  string
}

type learner struct {
	mu        sync.Mutex
	seen      map[learnKey]*learnEntry
	truncated bool
}

func newLearner() *learner { return &learner{seen: map[learnKey]*learnEntry{}} }

func (l *learner) record(v Verdict) {
	if v.Target == "" || (!v.Allowed && v.Fix == "") {
		return // invalid destinations and deny rules teach nothing
	}
	host := v.name
	if host == "" {
		h, _, err := net.SplitHostPort(v.Target)
		if err != nil {
			return
		}
		host = h
	}
	key := learnKey{host, v.port}
	if !v.Allowed {
		// Refused even in learn mode (a non-public address): remember the
		// address rule that would open it, to show, not to propose.
		if h, ps, err := net.SplitHostPort(v.Fix); err == nil {
			p, _ := strconv.Atoi(ps)
			key = learnKey{h, uint16(p)}
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.seen[key]
	if e == nil {
		if len(l.seen) >= maxLearned {
			l.truncated = true
			return
		}
		e = &learnEntry{}
		l.seen[key] = e
	}
	e.hits++
	if !v.Allowed {
		e.refused, e.reason = true, v.Reason
		return
	}
	e.refused = false
	if v.method == "" {
		e.tunnel = true
	} else if !slices.Contains(e.methods, v.method) {
		e.methods = append(e.methods, v.method)
	}
}

// Learned is what a learn-mode session reached, as rules.
type Learned struct {
	// Allow holds one rule per host and port that was allowed: the
	// minimal allowlist for the same session (exact names, exact ports,
	// the methods seen when the proxy saw them). Sorted.
	Allow []LearnedRule
	// Refused holds destinations refused even in learn mode because their
	// address is not public, with the address rule that would open them.
	// They are for showing: learn mode proposes only what open allowed.
	Refused []LearnedRule
	// Truncated: more destinations were seen than learn mode keeps.
	Truncated bool
}

// LearnedRule is one proposed rule.
type LearnedRule struct {
	Rule    string // as it would be written in allow = [...]
	Hits    int    // how many connections or requests it covers
	Covered bool   // the policy's allow rules already allow it
	Reason  string // for refused ones: why
}

// Proposed are the learned rules the allow rules do not cover yet: the
// lines a diff to claude-sandbox.toml would add (and trust would then
// have to approve, like any widening).
func (l *Learned) Proposed() []string {
	var out []string
	for _, r := range l.Allow {
		if !r.Covered {
			out = append(out, r.Rule)
		}
	}
	return out
}

// Learned returns what the policy recorded (nil unless the mode is Learn).
func (p *Policy) Learned() *Learned {
	if p.learn == nil {
		return nil
	}
	l := p.learn
	l.mu.Lock()
	defer l.mu.Unlock()
	out := &Learned{Truncated: l.truncated}
	for k, e := range l.seen {
		target := joinHostPort(k.host, k.port)
		rule := LearnedRule{Rule: target, Hits: e.hits}
		if e.refused {
			rule.Reason = e.reason
			out.Refused = append(out.Refused, rule)
			continue
		}
		methods := []string(nil)
		if !e.tunnel {
			methods = slices.Sorted(slices.Values(e.methods))
			rule.Rule += " " + strings.Join(methods, ",")
		}
		rule.Covered = p.allowsListed(k, methods)
		out.Allow = append(out.Allow, rule)
	}
	byRule := func(a, b LearnedRule) int { return strings.Compare(a.Rule, b.Rule) }
	slices.SortFunc(out.Allow, byRule)
	slices.SortFunc(out.Refused, byRule)
	return out
}

// allowsListed: would the allow rules alone let every method seen (all of
// them, for a tunnel) reach host and port?
func (p *Policy) allowsListed(k learnKey, methods []string) bool {
	name, addr, err := normalizeHost(k.host)
	if err != nil {
		return false
	}
	ok := func(method string) bool {
		for _, r := range p.allow {
			if (r.matchName(name) || (name == "" && r.matchAddr(addr))) && r.matchPort(k.port) && r.matchMethod(method) {
				return true
			}
		}
		return false
	}
	if methods == nil {
		return ok("")
	}
	for _, m := range methods {
		if !ok(m) {
			return false
		}
	}
	return true
}
