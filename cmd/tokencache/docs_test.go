package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Every relative link in the README and docs/ reaches a file, and every
// #anchor a heading of it; the README stays short.
func TestDocsLinksLive(t *testing.T) {
	files, _ := filepath.Glob("../../docs/*.md")
	files = append(files, "../../README.md")
	link := regexp.MustCompile(`\]\(([^)#\s]*)(#[^)\s]*)?\)`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(string(b), -1) {
			target, anchor := m[1], strings.TrimPrefix(m[2], "#")
			if strings.Contains(target, "://") {
				continue
			}
			path := f
			if target != "" {
				path = filepath.Join(filepath.Dir(f), target)
			}
			body, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("%s links to %s, which does not exist", f, target)
				continue
			}
			if anchor != "" && !hasAnchor(string(body), anchor) {
				t.Errorf("%s links to %s#%s: no such heading", f, target, anchor)
			}
		}
	}
	if b, _ := os.ReadFile("../../README.md"); strings.Count(string(b), "\n") > 250 {
		t.Errorf("README.md has %d lines; keep it under 250 and put the rest in docs/", strings.Count(string(b), "\n"))
	}
}

// hasAnchor reports whether markdown has a heading whose GitHub anchor is a.
func hasAnchor(markdown, a string) bool {
	drop := regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	for _, line := range strings.Split(markdown, "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.ToLower(strings.TrimSpace(strings.TrimLeft(line, "#")))
		if strings.ReplaceAll(drop.ReplaceAllString(h, ""), " ", "-") == a {
			return true
		}
	}
	return false
}

// Every test the docs name as holding an invariant exists (a name ending in
// "*" stands for the tests it begins).
func TestDocsNameRealTests(t *testing.T) {
	var sources strings.Builder
	_ = filepath.WalkDir("../..", func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && strings.HasPrefix(d.Name(), ".") && path != "../.." {
			return filepath.SkipDir // .git and the like
		}
		if err == nil && !d.IsDir() && strings.HasSuffix(path, "_test.go") {
			b, _ := os.ReadFile(path)
			sources.Write(b)
		}
		return nil
	})
	files, _ := filepath.Glob("../../docs/*.md")
	files = append(files, "../../README.md")
	named := regexp.MustCompile("`(Test[A-Z][A-Za-z0-9]*)(\\*?)`")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range named.FindAllStringSubmatch(string(b), -1) {
			decl := "func " + m[1]
			if m[2] == "" {
				decl += "("
			}
			if !strings.Contains(sources.String(), decl) {
				t.Errorf("%s names %s%s, which no test file declares", f, m[1], m[2])
			}
		}
	}
}
