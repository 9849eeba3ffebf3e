package api

import (
	"github.com/posture-project/posture/collector/store"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

type enrollService struct {
	posturev1.UnimplementedEnrollmentServiceServer
	s *Server
}

// Enroll enrolls a device (enroll.Enroller).
func (e *enrollService) Enroll(stream posturev1.EnrollmentService_EnrollServer) error {
	return statusOf(e.s.cfg.Enroller.Enroll(stream))
}

type reportService struct {
	posturev1.UnimplementedReportServiceServer
	s *Server
}

// StreamReports receives a device's reports (ingest.Ingester). The stream
// lasts as long as the certificate it was opened with counts.
func (r *reportService) StreamReports(stream posturev1.ReportService_StreamReportsServer) error {
	who := callerFrom(stream.Context())
	return statusOf(r.s.cfg.Ingester.Serve(stream, who.name, func() error { return r.s.streamCertCurrent(who) }))
}

// RenewCertificate renews a device's certificate (enroll.Enroller).
func (r *reportService) RenewCertificate(stream posturev1.ReportService_RenewCertificateServer) error {
	who := callerFrom(stream.Context())
	return statusOf(r.s.cfg.Enroller.Renew(stream, who.name, store.Cert{Serial: who.certSerial, KeySHA256: who.certKey}, who.replacedCert))
}
