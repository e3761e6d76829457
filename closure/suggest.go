package closure

import (
	"sort"
	"strings"
)

// closest returns up to n candidates near name: a prefix or substring match
// first, then by edit distance within a bound that grows with the name.
func closest(name string, candidates []string, n int) []string {
	lower := strings.ToLower(name)
	limit := max(2, len(name)/3)
	type scored struct {
		name  string
		score int
	}
	var hits []scored
	for _, c := range candidates {
		lc := strings.ToLower(c)
		switch {
		case lc == lower:
			hits = append(hits, scored{c, -2})
		case strings.HasPrefix(lc, lower) || strings.HasPrefix(lower, lc) && len(lc) >= 3:
			hits = append(hits, scored{c, -1})
		default:
			if d := levenshtein(lower, lc); d <= limit {
				hits = append(hits, scored{c, d})
			}
		}
	}
	sort.Slice(hits, func(i, j int) bool {
		if hits[i].score != hits[j].score {
			return hits[i].score < hits[j].score
		}
		if len(hits[i].name) != len(hits[j].name) {
			return len(hits[i].name) < len(hits[j].name)
		}
		return hits[i].name < hits[j].name
	})
	var out []string
	for i := 0; i < len(hits) && i < n; i++ {
		out = append(out, hits[i].name)
	}
	return out
}

func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
