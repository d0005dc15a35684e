package httpapi

import (
	"go/ast"
	"go/parser"
	"go/token"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
)

// tableCodes lists every code of ErrorTable once.
func tableCodes() []string {
	var codes []string
	for _, cs := range ErrorTable {
		for _, c := range cs {
			if !slices.Contains(codes, c) {
				codes = append(codes, c)
			}
		}
	}
	slices.Sort(codes)
	return codes
}

// The OpenAPI spec's error codes are ErrorTable's.
func TestSpecErrorCodesAreTheTable(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(OpenAPISpec)
	if err != nil {
		t.Fatal(err)
	}
	var spec []string
	for _, v := range doc.Components.Schemas["Error"].Value.Properties["code"].Value.Enum {
		spec = append(spec, v.(string))
	}
	slices.Sort(spec)
	if !slices.Equal(spec, tableCodes()) {
		t.Errorf("the spec's codes %v differ from ErrorTable's %v", spec, tableCodes())
	}
}

// The Go client's Code constants are ErrorTable's codes a client can meet
// (the client keeps no dependency, so it restates them; this holds them).
func TestClientErrorCodesAreInTheTable(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "../client/errors.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var client []string
	ast.Inspect(f, func(n ast.Node) bool {
		if vs, ok := n.(*ast.ValueSpec); ok && len(vs.Names) == 1 && strings.HasPrefix(vs.Names[0].Name, "Code") {
			if lit, ok := vs.Values[0].(*ast.BasicLit); ok {
				s, _ := strconv.Unquote(lit.Value)
				client = append(client, s)
			}
		}
		return true
	})
	if len(client) == 0 {
		t.Fatal("found no Code constants in client/errors.go")
	}
	for _, c := range client {
		if !slices.Contains(tableCodes(), c) {
			t.Errorf("the client's code %q is not in ErrorTable", c)
		}
	}
	// Every code a caller can act on has a constant.
	for _, c := range tableCodes() {
		if c != codeNotFound && c != codeMethodNotAllowed && c != codeInternal && !slices.Contains(client, c) {
			t.Errorf("ErrorTable's %q has no client constant", c)
		}
	}
}
