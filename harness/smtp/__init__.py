"""The scenario client: aiosmtplib sessions recorded as transcripts."""
