// Package nixgen turns a user's sandbox options into data Nix can read: a
// canonical options document, the entry expression that feeds it to the
// embedded templates, and the cache key that names the result. It runs no
// process and, but for hashing --module files (LoadModules), reads no file;
// user text only ever reaches Nix inside a JSON string.
package nixgen
