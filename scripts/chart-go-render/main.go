// Renders the chart with Go's text/template + sprig (Helm's function library) and Helm's
// include/required/fail/toYaml semantics; prints a JSON list of the parsed documents.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	sprig "github.com/Masterminds/sprig"
	yaml "gopkg.in/yaml.v3"
)

func toYaml(v interface{}) string {
	var b bytes.Buffer
	e := yaml.NewEncoder(&b)
	e.SetIndent(2)
	if err := e.Encode(v); err != nil {
		return ""
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func main() {
	chart := os.Args[1]
	var data map[string]interface{}
	if err := json.NewDecoder(os.Stdin).Decode(&data); err != nil {
		panic(err)
	}
	t := template.New("gotpl")
	funcs := sprig.TxtFuncMap()
	funcs["toYaml"] = toYaml
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return v, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return v, errors.New(msg)
		}
		return v, nil
	}
	funcs["fail"] = func(msg string) (string, error) { return "", errors.New(msg) }
	funcs["include"] = func(name string, d interface{}) (string, error) {
		var b bytes.Buffer
		err := t.ExecuteTemplate(&b, name, d)
		return b.String(), err
	}
	t.Funcs(funcs).Option("missingkey=zero")
	files, _ := filepath.Glob(filepath.Join(chart, "templates", "*"))
	sort.Strings(files)
	for _, f := range files {
		src, _ := os.ReadFile(f)
		if _, err := t.New(filepath.Base(f)).Parse(string(src)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	var docs []interface{}
	for _, f := range files {
		name := filepath.Base(f)
		if strings.HasPrefix(name, "_") {
			continue
		}
		var b bytes.Buffer
		if err := t.ExecuteTemplate(&b, name, data); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		out := strings.ReplaceAll(b.String(), "<no value>", "")
		dec := yaml.NewDecoder(strings.NewReader(out))
		for {
			var d interface{}
			if err := dec.Decode(&d); err != nil {
				if err.Error() == "EOF" {
					break
				}
				fmt.Fprintln(os.Stderr, name, err, "\n", out)
				os.Exit(4)
			}
			if d != nil {
				docs = append(docs, d)
			}
		}
	}
	json.NewEncoder(os.Stdout).Encode(docs)
}
