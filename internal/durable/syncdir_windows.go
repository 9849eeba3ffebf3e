package durable

// SyncDir does nothing on Windows: a directory cannot be opened for
// FlushFileBuffers there, and NTFS journals metadata changes such as
// renames itself.
func SyncDir(string) error { return nil }
