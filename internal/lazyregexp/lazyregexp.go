// Package lazyregexp holds package-level regular expressions that compile on
// first use rather than at program start, after the standard library's own
// internal/lazyregexp. Every claude-sandbox run pays each package's init,
// and a warm launch uses almost none of the expressions: compiling them all
// up front cost a sixth of `claude-sandbox version`.
package lazyregexp

import (
	"os"
	"regexp"
	"strings"
	"sync"
)

// Regexp compiles its expression the first time it is used.
type Regexp struct {
	compile func() *regexp.Regexp
}

// New delays compiling expr until first use. Under `go test` it compiles at
// once, so a malformed expression fails every test run instead of waiting
// for the rare path that uses it.
func New(expr string) *Regexp {
	r := &Regexp{compile: sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })}
	if inTest {
		r.compile()
	}
	return r
}

var inTest = len(os.Args) > 0 && strings.HasSuffix(os.Args[0], ".test")

func (r *Regexp) Match(b []byte) bool        { return r.compile().Match(b) }
func (r *Regexp) MatchString(s string) bool  { return r.compile().MatchString(s) }
func (r *Regexp) FindString(s string) string { return r.compile().FindString(s) }
func (r *Regexp) ReplaceAllString(src, repl string) string {
	return r.compile().ReplaceAllString(src, repl)
}
func (r *Regexp) FindStringSubmatch(s string) []string {
	return r.compile().FindStringSubmatch(s)
}
func (r *Regexp) FindAllStringSubmatch(s string, n int) [][]string {
	return r.compile().FindAllStringSubmatch(s, n)
}
