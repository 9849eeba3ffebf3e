package pki

// syncDir does nothing on Windows: a directory cannot be opened for
// FlushFileBuffers there, and NTFS journals metadata changes such as
// renames itself.
func syncDir(string) error { return nil }
