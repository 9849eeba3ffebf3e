// Package docscheck holds the tests that keep the README and docs/ true:
// every relative link reaches a file, and every #anchor a heading of it.
package docscheck
