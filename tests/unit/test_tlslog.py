"""The sending MTA's own account of a message's delivery attempt: its TLS session and the next hop's
reply, tied to the message by its queue id (harness.observe.tlslog).

Every line below is real: ``docker logs`` of the relay container (the MTA's own prefix kept), captured
on 2026-11-30 with Debian 12's postfix 3.7.11, exim4-daemon-light 4.96 and opensmtpd 6.8.0p2 relaying
to a harness mx (runs of throwaway scenarios with ``tls: {relay: {outbound: ...}, mx: {certificate:
...}}``). Long lines are split into adjacent string literals, their text unchanged; only the lines of
the processes that matter are kept (smtpd's and the cleanup's left out).
"""

from __future__ import annotations

import pytest

from harness.observe.tlslog import OUTCOMES, TRUST_LEVELS, HopTlsLog, hop_tls_from_log, tls_log_evidence

# Postfix relay, outbound verify, six messages sent to it back to back: four smtp processes deliver
# them at once (smtp[116] twice, smtp[117] twice), their lines interleaved.
POSTFIX_INTERLEAVED = (
    'Nov 30 21:44:10 relay postfix/qmgr[21]: 99DF027E2D7: from=<alice@origin.test>, size=369, nrcpt=1 '
        '(queue active)',
    'Nov 30 21:44:10 relay postfix/qmgr[21]: 9FBF727E377: from=<alice@origin.test>, size=369, nrcpt=1 '
        '(queue active)',
    'Nov 30 21:44:10 relay postfix/smtp[116]: Verified TLS connection established to '
        'mx.example.test[172.29.221.10]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) '
        'key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256',
    'Nov 30 21:44:10 relay postfix/qmgr[21]: A599227E455: from=<alice@origin.test>, size=369, nrcpt=1 '
        '(queue active)',
    'Nov 30 21:44:10 relay postfix/qmgr[21]: B577227E457: from=<alice@origin.test>, size=369, nrcpt=1 '
        '(queue active)',
    'Nov 30 21:44:10 relay postfix/qmgr[21]: C36B827E461: from=<alice@origin.test>, size=369, nrcpt=1 '
        '(queue active)',
    'Nov 30 21:44:10 relay postfix/smtp[116]: 99DF027E2D7: to=<bob1@example.test>, '
        'relay=mx.example.test[172.29.221.10]:25, delay=0.26, delays=0.03/0.04/0.01/0.17, dsn=2.0.0, '
        'status=sent (250 2.0.0 Ok: queued as D135C27E611)',
    'Nov 30 21:44:10 relay postfix/qmgr[21]: DF87F27E603: from=<alice@origin.test>, size=369, nrcpt=1 '
        '(queue active)',
    'Nov 30 21:44:10 relay postfix/smtp[117]: Verified TLS connection established to '
        'mx.example.test[172.29.221.10]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) '
        'key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256',
    'Nov 30 21:44:10 relay postfix/smtp[117]: 9FBF727E377: to=<bob2@example.test>, '
        'relay=mx.example.test[172.29.221.10]:25, delay=0.31, delays=0.01/0.04/0.24/0.02, dsn=2.0.0, '
        'status=sent (250 2.0.0 Ok: queued as E770827E2D7)',
    'Nov 30 21:44:10 relay postfix/smtp[118]: Verified TLS connection established to '
        'mx.example.test[172.29.221.10]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) '
        'key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256',
    'Nov 30 21:44:10 relay postfix/smtp[119]: Verified TLS connection established to '
        'mx.example.test[172.29.221.10]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) '
        'key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256',
    'Nov 30 21:44:11 relay postfix/smtp[119]: B577227E457: to=<bob4@example.test>, '
        'relay=mx.example.test[172.29.221.10]:25, delay=0.31, delays=0.02/0.04/0.22/0.04, dsn=2.0.0, '
        'status=sent (250 2.0.0 Ok: queued as 0948C27E2D7)',
    'Nov 30 21:44:11 relay postfix/smtp[118]: A599227E455: to=<bob3@example.test>, '
        'relay=mx.example.test[172.29.221.10]:25, delay=0.38, delays=0.02/0.06/0.24/0.06, dsn=2.0.0, '
        'status=sent (250 2.0.0 Ok: queued as 004FF27E619)',
    'Nov 30 21:44:11 relay postfix/smtp[117]: Verified TLS connection established to '
        'mx.example.test[172.29.221.10]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) '
        'key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256',
    'Nov 30 21:44:11 relay postfix/smtp[116]: Verified TLS connection established to '
        'mx.example.test[172.29.221.10]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) '
        'key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256',
    'Nov 30 21:44:11 relay postfix/smtp[116]: C36B827E461: to=<bob5@example.test>, '
        'relay=mx.example.test[172.29.221.10]:25, delay=0.33, delays=0.08/0.09/0.15/0.02, dsn=2.0.0, '
        'status=sent (250 2.0.0 Ok: queued as 1943127E627)',
    'Nov 30 21:44:11 relay postfix/smtp[117]: DF87F27E603: to=<bob6@example.test>, '
        'relay=mx.example.test[172.29.221.10]:25, delay=0.25, delays=0.04/0.04/0.12/0.04, dsn=2.0.0, '
        'status=sent (250 2.0.0 Ok: queued as 1606E27E457)',
)

# Postfix relay, outbound verify, mx stopped (a fault step) while the message came in, then started.
POSTFIX_DEFERRED_THEN_SENT = (
    'Nov 30 21:44:28 relay postfix/qmgr[22]: 6284727E5DE: from=<alice@origin.test>, size=416, nrcpt=1 '
        '(queue active)',
    'Nov 30 21:44:31 relay postfix/smtp[117]: connect to mx.example.test[172.28.205.10]:25: No route to '
        'host',
    'Nov 30 21:44:31 relay postfix/smtp[117]: 6284727E5DE: to=<bob@example.test>, relay=none, delay=3.2, '
        'delays=0.03/0.08/3.1/0, dsn=4.4.1, status=deferred (connect to mx.example.test[172.28.205.10]:25: '
        'No route to host)',
    'Nov 30 21:44:35 relay postfix/qmgr[22]: 6284727E5DE: from=<alice@origin.test>, size=416, nrcpt=1 '
        '(queue active)',
    'Nov 30 21:44:35 relay postfix/smtp[117]: Verified TLS connection established to '
        'mx.example.test[172.28.205.10]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) '
        'key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256',
    'Nov 30 21:44:35 relay postfix/smtp[117]: 6284727E5DE: to=<bob@example.test>, '
        'relay=mx.example.test[172.28.205.10]:25, delay=7.3, delays=7.2/0/0.01/0.04, dsn=2.0.0, status=sent '
        '(250 2.0.0 Ok: queued as 9B93A27E8B2)',
)

# Postfix relay, outbound may, mx on OpenSMTPD (whose side of every handshake fails): deferred
# twice, then (queued longer than minimal_backoff_time) retried in clear and delivered.
POSTFIX_TLS_FAILED_THEN_CLEAR = (
    'Nov 30 21:37:11 relay postfix/qmgr[23]: B561F27ECA8: from=<alice@origin.test>, size=373, nrcpt=1 '
        '(queue active)',
    'Nov 30 21:37:11 relay postfix/smtp[119]: SSL_connect error to mx.example.test[172.30.40.10]:25: -1',
    'Nov 30 21:37:11 relay postfix/smtp[119]: warning: TLS library problem: error:0A000438:SSL '
        'routines::tlsv1 alert internal error:../ssl/record/rec_layer_s3.c:1601:SSL alert number 80:',
    'Nov 30 21:37:11 relay postfix/smtp[119]: B561F27ECA8: to=<bob@example.test>, '
        'relay=mx.example.test[172.30.40.10]:25, delay=0.2, delays=0.08/0.05/0.06/0, dsn=4.7.5, '
        'status=deferred (Cannot start TLS: handshake failure)',
    'Nov 30 21:37:15 relay postfix/qmgr[23]: B561F27ECA8: from=<alice@origin.test>, size=373, nrcpt=1 '
        '(queue active)',
    'Nov 30 21:37:16 relay postfix/smtp[119]: SSL_connect error to mx.example.test[172.30.40.10]:25: -1',
    'Nov 30 21:37:16 relay postfix/smtp[119]: warning: TLS library problem: error:0A000438:SSL '
        'routines::tlsv1 alert internal error:../ssl/record/rec_layer_s3.c:1601:SSL alert number 80:',
    'Nov 30 21:37:16 relay postfix/smtp[119]: B561F27ECA8: to=<bob@example.test>, '
        'relay=mx.example.test[172.30.40.10]:25, delay=4.3, delays=4.3/0/0.01/0, dsn=4.7.5, status=deferred '
        '(Cannot start TLS: handshake failure)',
    'Nov 30 21:37:20 relay postfix/qmgr[23]: B561F27ECA8: from=<alice@origin.test>, size=373, nrcpt=1 '
        '(queue active)',
    'Nov 30 21:37:20 relay postfix/smtp[119]: SSL_connect error to mx.example.test[172.30.40.10]:25: -1',
    'Nov 30 21:37:20 relay postfix/smtp[119]: warning: TLS library problem: error:0A000438:SSL '
        'routines::tlsv1 alert internal error:../ssl/record/rec_layer_s3.c:1601:SSL alert number 80:',
    'Nov 30 21:37:20 relay postfix/smtp[119]: B561F27ECA8: Cannot start TLS: handshake failure',
    'Nov 30 21:37:20 relay postfix/smtp[119]: B561F27ECA8: to=<bob@example.test>, '
        'relay=mx.example.test[172.30.40.10]:25, delay=8.4, delays=8.3/0/0.04/0.01, dsn=2.0.0, status=sent '
        '(250 2.0.0 36de475b Message accepted for delivery)',
)

# Postfix relay, outbound may, mx offering no STARTTLS.
POSTFIX_CLEAR = (
    'Nov 30 21:36:07 relay postfix/qmgr[21]: 42E7927E4D3: from=<alice@origin.test>, size=367, nrcpt=1 '
        '(queue active)',
    'Nov 30 21:36:07 relay postfix/smtp[116]: 42E7927E4D3: to=<bob@example.test>, '
        'relay=mx.example.test[172.29.79.10]:25, delay=0.18, delays=0.04/0.06/0/0.08, dsn=2.0.0, status=sent '
        '(250 2.0.0 Ok: queued as 6778D27E4D8)',
)

# Postfix relay, outbound verify, mx with an expired certificate.
POSTFIX_VERIFY_EXPIRED = (
    'Nov 30 21:36:20 relay postfix/qmgr[22]: AE01227E5C2: from=<alice@origin.test>, size=374, nrcpt=1 '
        '(queue active)',
    'Nov 30 21:36:20 relay postfix/smtp[117]: server certificate verification failed for '
        'mx.example.test[172.30.230.10]:25: certificate has expired',
    'Nov 30 21:36:20 relay postfix/smtp[117]: Untrusted TLS connection established to '
        'mx.example.test[172.30.230.10]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) '
        'key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256',
    'Nov 30 21:36:20 relay postfix/smtp[117]: AE01227E5C2: to=<bob@example.test>, '
        'relay=mx.example.test[172.30.230.10]:25, delay=0.06, delays=0.04/0.02/0.01/0, dsn=4.7.5, '
        'status=deferred (Server certificate not verified)',
)

# Postfix relay, outbound encrypt, mx certificate for wrong-name.invalid.
POSTFIX_ENCRYPT_WRONG_NAME = (
    'Nov 30 21:35:33 relay postfix/qmgr[22]: 7AA0627E035: from=<alice@origin.test>, size=377, nrcpt=1 '
        '(queue active)',
    'Nov 30 21:35:33 relay postfix/smtp[117]: Trusted TLS connection established to '
        'mx.example.test[172.31.179.10]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) '
        'key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256',
    'Nov 30 21:35:33 relay postfix/smtp[117]: 7AA0627E035: to=<bob@example.test>, '
        'relay=mx.example.test[172.31.179.10]:25, delay=0.42, delays=0.02/0.08/0.08/0.24, dsn=2.0.0, '
        'status=sent (250 2.0.0 Ok: queued as D9E0B27E038)',
)

# Postfix relay, outbound verify, Postfix mx with smtpd_recipient_restrictions = defer.
POSTFIX_MX_SAID_450 = (
    'Nov 30 21:47:37 relay postfix/qmgr[21]: D7B1B27E436: from=<alice@origin.test>, size=419, nrcpt=1 '
        '(queue active)',
    'Nov 30 21:47:37 relay postfix/smtp[115]: Verified TLS connection established to '
        'mx.example.test[172.31.28.10]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) '
        'key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256',
    'Nov 30 21:47:38 relay postfix/smtp[115]: D7B1B27E436: to=<bob@example.test>, '
        'relay=mx.example.test[172.31.28.10]:25, delay=0.15, delays=0.06/0.05/0.02/0.02, dsn=4.3.2, '
        'status=deferred (host mx.example.test[172.31.28.10] said: 450 4.3.2 <bob@example.test>: Recipient '
        'address rejected: Try again later (in reply to RCPT TO command))',
)

# Exim relay, outbound verify, mx with a valid certificate.
EXIM_VALID = (
    '2026-11-30 21:38:15.335 1xY94h-00000c-12 <= alice@origin.test H=(client.origin.test) [172.30.187.1] '
        'P=esmtp S=397 id=4672dd83-e8bc-4663-8e6b-008317fb2038@origin.test for bob@example.test',
    '2026-11-30 21:38:15.645 1xY94h-00000c-12 => bob@example.test P=<alice@origin.test> R=dnslookup '
        'T=remote_smtp S=413 H=mx.example.test [172.30.187.10]:25 '
        'X=TLS1.3:ECDHE_SECP256R1__RSA_PSS_RSAE_SHA256__AES_256_GCM:256 CV=yes C="250 OK '
        'id=1xY94h-00000b-1Y" QT=0.318s DT=0.111s',
    '2026-11-30 21:38:15.663 1xY94h-00000c-12 Completed',
)

# Exim relay, outbound may, mx with an expired certificate.
EXIM_MAY_EXPIRED = (
    '2026-11-30 21:37:50.351 1xY94I-00000c-16 <= alice@origin.test H=(client.origin.test) [172.29.142.1] '
        'P=esmtp S=396 id=0ef822d6-0acb-4b7c-b053-d2c4f7a9d88f@origin.test for bob@example.test',
    '2026-11-30 21:37:50.425 1xY94I-00000c-16 => bob@example.test P=<alice@origin.test> R=dnslookup '
        'T=remote_smtp S=412 H=mx.example.test [172.29.142.10]:25 '
        'X=TLS1.3:ECDHE_SECP256R1__RSA_PSS_RSAE_SHA256__AES_256_GCM:256 CV=no C="250 OK id=1xY94I-00000b-1D" '
        'QT=0.082s DT=0.028s',
    '2026-11-30 21:37:50.435 1xY94I-00000c-16 Completed',
)

# Exim relay, outbound may, mx offering no STARTTLS.
EXIM_MAY_CLEAR = (
    '2026-11-30 21:37:52.278 1xY94K-00000b-0n <= alice@origin.test H=(client.origin.test) [172.30.159.1] '
        'P=esmtp S=393 id=d2bf5300-ef13-445c-9ae6-c68416e3fd9b@origin.test for bob@example.test',
    '2026-11-30 21:37:52.539 1xY94K-00000b-0n => bob@example.test P=<alice@origin.test> R=dnslookup '
        'T=remote_smtp S=409 H=mx.example.test [172.30.159.10]:25 C="250 OK id=1xY94K-00000U-1K" QT=0.265s '
        'DT=0.120s',
    '2026-11-30 21:37:52.563 1xY94K-00000b-0n Completed',
)

# Exim relay, outbound verify, mx with an expired certificate.
EXIM_VERIFY_EXPIRED = (
    '2026-11-30 21:38:13.455 1xY94f-00000c-1Q <= alice@origin.test H=(client.origin.test) [172.29.193.1] '
        'P=esmtp S=399 id=59a32a5f-943c-422d-aaaf-358ed168a810@origin.test for bob@example.test',
    '2026-11-30 21:38:13.542 1xY94f-00000c-1Q == bob@example.test R=dnslookup T=remote_smtp defer (-37) '
        'H=mx.example.test [172.29.193.10]:25 DT=0.013s: TLS session: (certificate verification failed): '
        'certificate invalid',
    '2026-11-30 21:38:13.594 1xY94f-00000c-1Q == bob@example.test R=dnslookup T=remote_smtp defer (-54) '
        "DT=0.000s: retry time not reached for any host for 'example.test'",
    '2026-11-30 21:38:18.607 1xY94f-00000c-1Q == bob@example.test R=dnslookup T=remote_smtp defer (-54) '
        "DT=0.000s: retry time not reached for any host for 'example.test'",
)

# Exim relay, outbound may, mx on OpenSMTPD (its handshake fails): in clear at once.
EXIM_TLS_FAILED_THEN_CLEAR = (
    '2026-11-30 21:38:37.717 1xY953-00000b-2C <= alice@origin.test H=(client.origin.test) [172.31.247.1] '
        'P=esmtp S=399 id=9a1bdc6c-2253-46bb-88b7-97b79abf7ed5@origin.test for bob@example.test',
    '2026-11-30 21:38:37.793 1xY953-00000b-2C TLS session: (gnutls_handshake): Internal error: '
        'delivering unencrypted to H=mx.example.test [172.31.247.10] (not in hosts_require_tls)',
    '2026-11-30 21:38:37.821 1xY953-00000b-2C => bob@example.test P=<alice@origin.test> R=dnslookup '
        'T=remote_smtp S=415 H=mx.example.test [172.31.247.10]:25 C="250 2.0.0 96fd2bc0 Message accepted for '
        'delivery" QT=0.107s DT=0.013s',
    '2026-11-30 21:38:37.824 1xY953-00000b-2C Completed',
)

# Exim relay, outbound verify, mx stopped while the message came in, then started.
EXIM_DEFERRED_THEN_SENT = (
    '2026-11-30 21:44:26.169 1xY9Ag-00000b-0W <= alice@origin.test H=(client.origin.test) [172.28.219.1] '
        'P=esmtp S=441 id=bfd394c8-ec57-4036-a1b3-76c1f9d025cc@origin.test for bob@example.test',
    '2026-11-30 21:44:29.302 1xY9Ag-00000b-0W == bob@example.test R=dnslookup T=remote_smtp defer (113): '
        'No route to host DT=3.073s',
    '2026-11-30 21:44:29.454 1xY9Ag-00000b-0W == bob@example.test R=dnslookup T=remote_smtp defer (-54) '
        "DT=0.000s: retry time not reached for any host for 'example.test'",
    '2026-11-30 21:44:34.443 1xY9Ag-00000b-0W == bob@example.test R=dnslookup T=remote_smtp defer (-54) '
        "DT=0.000s: retry time not reached for any host for 'example.test'",
    '2026-11-30 21:44:39.543 1xY9Ag-00000b-0W => bob@example.test P=<alice@origin.test> R=dnslookup '
        'T=remote_smtp S=457 H=mx.example.test [172.28.219.10]:25 '
        'X=TLS1.3:ECDHE_SECP256R1__RSA_PSS_RSAE_SHA256__AES_256_GCM:256 CV=yes C="250 OK '
        'id=1xY9At-00001a-1a" QT=13s DT=0.036s',
    '2026-11-30 21:44:39.553 1xY9Ag-00000b-0W Completed',
)

# Exim relay, outbound verify, Postfix mx with smtpd_recipient_restrictions = defer.
EXIM_MX_SAID_450 = (
    '2026-11-30 21:47:36.584 1xY9Dk-00000a-1o <= alice@origin.test H=(client.origin.test) [172.30.95.1] '
        'P=esmtp S=444 id=a5f01b62-76cd-4748-be04-cb0ff545fd80@origin.test for bob@example.test',
    '2026-11-30 21:47:36.861 1xY9Dk-00000a-1o H=mx.example.test [172.30.95.10] TLS error on connection '
        '(recv): Error in the pull function.',
    '2026-11-30 21:47:36.863 1xY9Dk-00000a-1o == bob@example.test R=dnslookup T=remote_smtp defer (-44) '
        'H=mx.example.test [172.30.95.10]:25 DT=0.000s: SMTP error from remote mail server after RCPT '
        'TO:<bob@example.test>: 450 4.3.2 <bob@example.test>: Recipient address rejected: Try again later',
    '2026-11-30 21:47:38.544 1xY9Dk-00000a-1o == bob@example.test routing defer (-52) DT=0.000s: retry '
        'time not reached',
)

# OpenSMTPD relay, outbound verify, Postfix mx: six messages over one session.
OPENSMTPD_ONE_SESSION_SIX_MESSAGES = (
    'bc53f512a9e31ec3 smtp message msgid=a92a889f size=361 nrcpt=1 proto=ESMTP',
    'bc53f51588fc7d23 mta connecting address=smtp+tls://172.28.234.10:25 '
        'host=mailflow-20261130-214400-83e411-mx.mailflow-20261130-214400-83e411',
    'bc53f51588fc7d23 mta connected',
    'bc53f51588fc7d23 mta tls ciphers=TLSv1.3:TLS_AES_256_GCM_SHA384:256',
    'bc53f51588fc7d23 mta server-cert-check result="success"',
    'bc53f516f957e9d3 smtp message msgid=42cc5954 size=361 nrcpt=1 proto=ESMTP',
    'bc53f517173275d7 smtp message msgid=ea1a643f size=361 nrcpt=1 proto=ESMTP',
    'bc53f518a79ec16f smtp message msgid=405e0006 size=361 nrcpt=1 proto=ESMTP',
    'bc53f51588fc7d23 mta delivery evpid=a92a889f37450ac7 from=<alice@origin.test> '
        'to=<bob1@example.test> rcpt=<-> source="172.28.234.11" relay="172.28.234.10 '
        '(mailflow-20261130-214400-83e411-mx.mailflow-20261130-214400-83e411)" delay=1s result="Ok" '
        'stat="250 2.0.0 Ok: queued as E0AE827E442"',
    'bc53f51983979ba0 smtp message msgid=3912eaad size=361 nrcpt=1 proto=ESMTP',
    'bc53f51ae1a87e1b smtp message msgid=e0699653 size=361 nrcpt=1 proto=ESMTP',
    'bc53f51588fc7d23 mta delivery evpid=42cc59547dc0e593 from=<alice@origin.test> '
        'to=<bob2@example.test> rcpt=<-> source="172.28.234.11" relay="172.28.234.10 '
        '(mailflow-20261130-214400-83e411-mx.mailflow-20261130-214400-83e411)" delay=1s result="Ok" '
        'stat="250 2.0.0 Ok: queued as 040B627E459"',
    'bc53f51588fc7d23 mta delivery evpid=ea1a643fb3a18588 from=<alice@origin.test> '
        'to=<bob3@example.test> rcpt=<-> source="172.28.234.11" relay="172.28.234.10 '
        '(mailflow-20261130-214400-83e411-mx.mailflow-20261130-214400-83e411)" delay=1s result="Ok" '
        'stat="250 2.0.0 Ok: queued as 122CC27E22D"',
    'bc53f51588fc7d23 mta delivery evpid=405e00060440f4d6 from=<alice@origin.test> '
        'to=<bob4@example.test> rcpt=<-> source="172.28.234.11" relay="172.28.234.10 '
        '(mailflow-20261130-214400-83e411-mx.mailflow-20261130-214400-83e411)" delay=1s result="Ok" '
        'stat="250 2.0.0 Ok: queued as 1FBE127E21E"',
    'bc53f51588fc7d23 mta delivery evpid=3912eaadc86ddff0 from=<alice@origin.test> '
        'to=<bob5@example.test> rcpt=<-> source="172.28.234.11" relay="172.28.234.10 '
        '(mailflow-20261130-214400-83e411-mx.mailflow-20261130-214400-83e411)" delay=1s result="Ok" '
        'stat="250 2.0.0 Ok: queued as 333C427E376"',
    'bc53f51588fc7d23 mta delivery evpid=e0699653724e6909 from=<alice@origin.test> '
        'to=<bob6@example.test> rcpt=<-> source="172.28.234.11" relay="172.28.234.10 '
        '(mailflow-20261130-214400-83e411-mx.mailflow-20261130-214400-83e411)" delay=0s result="Ok" '
        'stat="250 2.0.0 Ok: queued as 3FB9C27E2D7"',
)

# OpenSMTPD relay, outbound encrypt (tls no-verify), Postfix mx with a wrong-name certificate.
OPENSMTPD_WRONG_NAME = (
    '6e187b9812499c77 smtp message msgid=9c95140c size=373 nrcpt=1 proto=ESMTP',
    '6e187b9be29f4bba mta connecting address=smtp+tls://172.30.51.10:25 '
        'host=mailflow-20261130-214028-e32233-mx.mailflow-20261130-214028-e32233',
    '6e187b9be29f4bba mta connected',
    '6e187b9be29f4bba mta tls ciphers=TLSv1.3:TLS_AES_256_GCM_SHA384:256',
    "6e187b9be29f4bba mta ssl_check_name: no match for 'mx.example.test' in cert",
    '6e187b9be29f4bba mta server-cert-check result="failure"',
    '6e187b9be29f4bba mta delivery evpid=9c95140cb7894057 from=<alice@origin.test> to=<bob@example.test> '
        'rcpt=<-> source="172.30.51.11" relay="172.30.51.10 '
        '(mailflow-20261130-214028-e32233-mx.mailflow-20261130-214028-e32233)" delay=0s result="Ok" '
        'stat="250 2.0.0 Ok: queued as 9763027E334"',
)

# OpenSMTPD relay, outbound may, OpenSMTPD mx (its handshake fails): downgraded to plain.
OPENSMTPD_DOWNGRADED = (
    '57885712ffd25fc1 smtp message msgid=4d75ef19 size=360 nrcpt=1 proto=ESMTP',
    '578857151a81d1a0 mta connecting address=smtp://172.31.86.10:25 '
        'host=mailflow-20261130-213922-14665a-mx.mailflow-20261130-213922-14665a',
    '578857151a81d1a0 mta connected',
    'smtp-out: Error on session 578857151a81d1a0: opportunistic TLS failed, downgrading to plain',
    '578857151a81d1a0 mta connecting address=smtp+notls://172.31.86.10:25 '
        'host=mailflow-20261130-213922-14665a-mx.mailflow-20261130-213922-14665a',
    '578857151a81d1a0 mta connected',
    '578857151a81d1a0 mta delivery evpid=4d75ef19856e79ea from=<alice@origin.test> to=<bob@example.test> '
        'rcpt=<-> source="172.31.86.11" relay="172.31.86.10 '
        '(mailflow-20261130-213922-14665a-mx.mailflow-20261130-213922-14665a)" delay=1s result="Ok" '
        'stat="250 2.0.0 57551e1e Message accepted for delivery"',
)

# OpenSMTPD relay, outbound verify, Postfix mx stopped, then started and the queue flushed.
OPENSMTPD_DEFERRED_THEN_SENT = (
    'ce5e56654bf905b4 smtp message msgid=b6b609a0 size=413 nrcpt=1 proto=ESMTP',
    'ce5e5668b5c8e609 mta connecting address=smtp+tls://172.28.117.10:25 host=172.28.117.10',
    'ce5e5668b5c8e609 mta error reason=IO Error: No route to host',
    'smtp-out: Disabling route [] <-> 172.28.117.10 (172.28.117.10) for 15s',
    'smtp-out: No valid route for [connector:[]->[relay:example.test,smtp+tls],0x0]',
    '0000000000000000 mta delivery evpid=b6b609a09e4095f2 from=<alice@origin.test> to=<bob@example.test> '
        'rcpt=<-> source="-" relay="example.test" delay=11s result="TempFail" stat="Network error on '
        'destination MXs"',
    'smtp-out: Enabling route [] <-> 172.28.117.10 (172.28.117.10)',
    'ce5e566b91e6f962 mta connecting address=smtp+tls://172.28.117.10:25 '
        'host=mailflow-20261130-214417-26eb1a-mx.mailflow-20261130-214417-26eb1a',
    'ce5e566b91e6f962 mta connected',
    'ce5e566b91e6f962 mta tls ciphers=TLSv1.3:TLS_AES_256_GCM_SHA384:256',
    'ce5e566b91e6f962 mta server-cert-check result="success"',
    'ce5e566b91e6f962 mta delivery evpid=b6b609a09e4095f2 from=<alice@origin.test> to=<bob@example.test> '
        'rcpt=<-> source="172.28.117.11" relay="172.28.117.10 '
        '(mailflow-20261130-214417-26eb1a-mx.mailflow-20261130-214417-26eb1a)" delay=30s result="Ok" '
        'stat="250 2.0.0 Ok: queued as 4A39527E363"',
)

# OpenSMTPD relay, outbound may, Postfix mx offering no STARTTLS.
OPENSMTPD_CLEAR = (
    'e2f75ff1b3671bb9 smtp message msgid=44482032 size=364 nrcpt=1 proto=ESMTP',
    'e2f75ff487905e13 mta connecting address=smtp://172.30.26.10:25 '
        'host=mailflow-20261130-214036-632c78-mx.mailflow-20261130-214036-632c78',
    'e2f75ff487905e13 mta connected',
    'e2f75ff487905e13 mta delivery evpid=44482032c03c7dac from=<alice@origin.test> to=<bob@example.test> '
        'rcpt=<-> source="172.30.26.11" relay="172.30.26.10 '
        '(mailflow-20261130-214036-632c78-mx.mailflow-20261130-214036-632c78)" delay=1s result="Ok" '
        'stat="250 2.0.0 Ok: queued as E9CD527E68C"',
)

# OpenSMTPD relay, outbound verify, Postfix mx with smtpd_recipient_restrictions = defer.
OPENSMTPD_MX_SAID_450 = (
    '2db39364a0bff541 smtp message msgid=f288abf5 size=412 nrcpt=1 proto=ESMTP',
    '2db39367199ea113 mta connecting address=smtp+tls://172.31.159.10:25 '
        'host=mailflow-20261130-214727-59925f-mx.mailflow-20261130-214727-59925f',
    '2db39367199ea113 mta connected',
    '2db39367199ea113 mta tls ciphers=TLSv1.3:TLS_AES_256_GCM_SHA384:256',
    '2db39367199ea113 mta server-cert-check result="success"',
    '2db39367199ea113 mta delivery evpid=f288abf5f5add653 from=<alice@origin.test> to=<bob@example.test> '
        'rcpt=<-> source="172.31.159.11" relay="172.31.159.10 '
        '(mailflow-20261130-214727-59925f-mx.mailflow-20261130-214727-59925f)" delay=0s result="TempFail" '
        'stat="450 4.3.2 <bob@example.test>: Recipient address rejected: Try again later"',
)


def test_postfix_picks_the_handshake_of_the_process_that_delivered_the_message() -> None:
    # B577 (smtp[119]) and A599 (smtp[118]) shook hands one after the other and delivered in the other
    # order; smtp[116] delivered 99DF, then shook hands again for C36B.
    lines = POSTFIX_INTERLEAVED
    a599 = hop_tls_from_log("postfix", lines, "A599227E455")
    assert a599 is not None
    assert (a599.peer, a599.version, a599.cipher, a599.trust, a599.reply, a599.outcome) == (
        "mx.example.test", "TLSv1.3", "TLS_AES_256_GCM_SHA384", "verified",
        "250 2.0.0 Ok: queued as 004FF27E619", "sent")
    assert a599.line.splitlines() == [lines[10], lines[13]]
    assert "postfix/smtp[118]: Verified TLS" in a599.line
    b577 = hop_tls_from_log("postfix", lines, "B577227E457")
    assert b577 is not None and b577.line.splitlines() == [lines[11], lines[12]]
    first, second = (hop_tls_from_log("postfix", lines, q) for q in ("99DF027E2D7", "C36B827E461"))
    assert first is not None and first.line.splitlines() == [lines[2], lines[6]]
    assert second is not None and second.line.splitlines() == [lines[15], lines[16]]
    assert second.reply == "250 2.0.0 Ok: queued as 1943127E627"


def test_postfix_a_clear_delivery_after_an_encrypted_one_of_the_same_process_has_no_tls() -> None:
    # Two real runs spliced: smtp[116]'s TLS delivery of 99DF (POSTFIX_INTERLEAVED), then an smtp[116]
    # delivering another message in clear (POSTFIX_CLEAR, its mx offered no STARTTLS).
    clear_delivery = POSTFIX_CLEAR[-1]
    assert "postfix/smtp[116]: 42E7927E4D3: to=" in clear_delivery
    lines = [*POSTFIX_INTERLEAVED[:7], clear_delivery]
    facts = hop_tls_from_log("postfix", lines, "42E7927E4D3")
    assert facts is not None
    assert (facts.version, facts.cipher, facts.trust) == (None, None, None)
    assert facts.line == clear_delivery


def test_postfix_in_clear() -> None:
    facts = hop_tls_from_log("postfix", POSTFIX_CLEAR, "42E7927E4D3")
    assert facts == HopTlsLog("mx.example.test", None, None, None, "250 2.0.0 Ok: queued as 6778D27E4D8",
                              POSTFIX_CLEAR[-1], "sent")


def test_postfix_deferred_then_sent_gives_the_last_attempt() -> None:
    facts = hop_tls_from_log("postfix", POSTFIX_DEFERRED_THEN_SENT, "6284727E5DE")
    assert facts is not None
    assert (facts.outcome, facts.trust, facts.version, facts.reply) == (
        "sent", "verified", "TLSv1.3", "250 2.0.0 Ok: queued as 9B93A27E8B2")
    assert facts.line.splitlines() == list(POSTFIX_DEFERRED_THEN_SENT[-2:])
    # Only the deferral in the window: no host was reached.
    deferral = hop_tls_from_log("postfix", POSTFIX_DEFERRED_THEN_SENT[:3], "6284727E5DE")
    assert deferral is not None
    assert (deferral.outcome, deferral.peer, deferral.version, deferral.reply) == ("deferred", None, None, None)


def test_postfix_handshake_failed_then_delivered_in_clear() -> None:
    facts = hop_tls_from_log("postfix", POSTFIX_TLS_FAILED_THEN_CLEAR, "B561F27ECA8")
    assert facts is not None
    assert (facts.outcome, facts.version, facts.trust) == ("sent", None, None)
    assert facts.reply == "250 2.0.0 36de475b Message accepted for delivery"
    # The failed handshake of that attempt (not the earlier attempts') explains the clear delivery.
    assert facts.line.splitlines() == list(POSTFIX_TLS_FAILED_THEN_CLEAR[-4:])
    assert "Cannot start TLS: handshake failure" in facts.line


def test_postfix_verification_failed() -> None:
    facts = hop_tls_from_log("postfix", POSTFIX_VERIFY_EXPIRED, "AE01227E5C2")
    assert facts is not None
    assert (facts.outcome, facts.version, facts.trust, facts.reply) == ("deferred", "TLSv1.3", "untrusted", None)
    assert "certificate has expired" in facts.line
    assert "status=deferred (Server certificate not verified)" in facts.line


def test_postfix_encrypt_checks_the_chain_only() -> None:
    facts = hop_tls_from_log("postfix", POSTFIX_ENCRYPT_WRONG_NAME, "7AA0627E035")
    assert facts is not None and (facts.trust, facts.outcome) == ("trusted", "sent")


def test_postfix_the_next_hops_refusal_is_its_reply() -> None:
    facts = hop_tls_from_log("postfix", POSTFIX_MX_SAID_450, "D7B1B27E436")
    assert facts is not None
    assert (facts.outcome, facts.trust) == ("deferred", "verified")
    assert facts.reply == "450 4.3.2 <bob@example.test>: Recipient address rejected: Try again later"


def test_exim_reads_the_delivery_line() -> None:
    facts = hop_tls_from_log("exim", EXIM_VALID, "1xY94h-00000c-12")
    assert facts == HopTlsLog("mx.example.test", "TLSv1.3", "ECDHE_SECP256R1__RSA_PSS_RSAE_SHA256__AES_256_GCM",
                              "verified", "250 OK id=1xY94h-00000b-1Y", EXIM_VALID[1], "sent")
    expired = hop_tls_from_log("exim", EXIM_MAY_EXPIRED, "1xY94I-00000c-16")
    assert expired is not None and (expired.trust, expired.outcome) == ("untrusted", "sent")


def test_exim_in_clear() -> None:
    facts = hop_tls_from_log("exim", EXIM_MAY_CLEAR, "1xY94K-00000b-0n")
    assert facts is not None
    assert (facts.version, facts.cipher, facts.trust, facts.reply) == (None, None, None, "250 OK id=1xY94K-00000U-1K")


def test_exim_handshake_failed_then_delivered_in_clear() -> None:
    facts = hop_tls_from_log("exim", EXIM_TLS_FAILED_THEN_CLEAR, "1xY953-00000b-2C")
    assert facts is not None
    assert (facts.version, facts.outcome, facts.reply) == (None, "sent",
                                                           "250 2.0.0 96fd2bc0 Message accepted for delivery")
    assert facts.line.splitlines() == list(EXIM_TLS_FAILED_THEN_CLEAR[1:3])


def test_exim_a_retry_time_not_reached_is_no_attempt() -> None:
    facts = hop_tls_from_log("exim", EXIM_VERIFY_EXPIRED, "1xY94f-00000c-1Q")
    assert facts is not None
    assert (facts.outcome, facts.peer, facts.version, facts.reply) == ("deferred", "mx.example.test", None, None)
    assert facts.line == EXIM_VERIFY_EXPIRED[1]


def test_exim_deferred_then_sent_gives_the_last_attempt() -> None:
    facts = hop_tls_from_log("exim", EXIM_DEFERRED_THEN_SENT, "1xY9Ag-00000b-0W")
    assert facts is not None
    assert (facts.outcome, facts.trust, facts.line) == ("sent", "verified", EXIM_DEFERRED_THEN_SENT[4])
    deferral = hop_tls_from_log("exim", EXIM_DEFERRED_THEN_SENT[:4], "1xY9Ag-00000b-0W")
    assert deferral is not None and (deferral.outcome, deferral.peer) == ("deferred", None)
    assert "No route to host" in deferral.line


def test_exim_the_next_hops_refusal_is_its_reply() -> None:
    facts = hop_tls_from_log("exim", EXIM_MX_SAID_450, "1xY9Dk-00000a-1o")
    assert facts is not None
    assert facts.reply == "450 4.3.2 <bob@example.test>: Recipient address rejected: Try again later"
    # Exim's deferral lines carry no X=: the session was encrypted, the log does not say so.
    assert (facts.outcome, facts.version, facts.trust) == ("deferred", None, None)
    assert facts.line.splitlines() == list(EXIM_MX_SAID_450[1:3])


def test_opensmtpd_one_session_carries_every_message() -> None:
    for msgid, reply in (("a92a889f", "E0AE827E442"), ("405e0006", "1FBE127E21E"), ("e0699653", "3FB9C27E2D7")):
        facts = hop_tls_from_log("opensmtpd", OPENSMTPD_ONE_SESSION_SIX_MESSAGES, msgid)
        assert facts is not None
        assert (facts.peer, facts.version, facts.cipher, facts.trust, facts.reply, facts.outcome) == (
            "172.28.234.10", "TLSv1.3", "TLS_AES_256_GCM_SHA384", "verified", f"250 2.0.0 Ok: queued as {reply}",
            "sent")
        assert facts.line.splitlines()[:2] == list(OPENSMTPD_ONE_SESSION_SIX_MESSAGES[3:5])
    # The full envelope id does as well as the message id.
    assert hop_tls_from_log("opensmtpd", OPENSMTPD_ONE_SESSION_SIX_MESSAGES, "a92a889f37450ac7") is not None


def test_opensmtpd_wrong_name_is_untrusted() -> None:
    facts = hop_tls_from_log("opensmtpd", OPENSMTPD_WRONG_NAME, "9c95140c")
    assert facts is not None and (facts.trust, facts.outcome) == ("untrusted", "sent")
    assert "ssl_check_name: no match for 'mx.example.test' in cert" in facts.line


def test_opensmtpd_downgraded_to_plain() -> None:
    facts = hop_tls_from_log("opensmtpd", OPENSMTPD_DOWNGRADED, "4d75ef19")
    assert facts is not None
    assert (facts.version, facts.trust, facts.outcome) == (None, None, "sent")
    assert facts.line.splitlines() == [OPENSMTPD_DOWNGRADED[3], OPENSMTPD_DOWNGRADED[6]]


def test_opensmtpd_in_clear() -> None:
    facts = hop_tls_from_log("opensmtpd", OPENSMTPD_CLEAR, "44482032")
    assert facts is not None
    assert (facts.version, facts.trust, facts.reply) == (None, None, "250 2.0.0 Ok: queued as E9CD527E68C")


def test_opensmtpd_deferred_then_sent_gives_the_last_attempt() -> None:
    facts = hop_tls_from_log("opensmtpd", OPENSMTPD_DEFERRED_THEN_SENT, "b6b609a0")
    assert facts is not None
    assert (facts.outcome, facts.trust, facts.peer) == ("sent", "verified", "172.28.117.10")
    # The deferral alone: no session carried it (session 0000000000000000).
    deferral = hop_tls_from_log("opensmtpd", OPENSMTPD_DEFERRED_THEN_SENT[:6], "b6b609a0")
    assert deferral == HopTlsLog(None, None, None, None, None, OPENSMTPD_DEFERRED_THEN_SENT[5], "deferred")


def test_opensmtpd_the_next_hops_refusal_is_its_reply() -> None:
    facts = hop_tls_from_log("opensmtpd", OPENSMTPD_MX_SAID_450, "f288abf5")
    assert facts is not None
    assert (facts.outcome, facts.trust) == ("deferred", "verified")
    assert facts.reply == "450 4.3.2 <bob@example.test>: Recipient address rejected: Try again later"


@pytest.mark.parametrize(("mta", "lines"), [("postfix", POSTFIX_INTERLEAVED), ("exim", EXIM_VALID),
                                            ("opensmtpd", OPENSMTPD_ONE_SESSION_SIX_MESSAGES)])
def test_an_unknown_queue_id_has_no_facts(mta: str, lines: tuple[str, ...]) -> None:
    for queue_id in ("NOSUCHID", "1xY94h-00000c-99", "deadbeef", ""):
        assert hop_tls_from_log(mta, lines, queue_id) is None


def test_another_mtas_lines_or_an_unknown_mta_give_nothing() -> None:
    assert hop_tls_from_log("exim", POSTFIX_INTERLEAVED, "A599227E455") is None
    assert hop_tls_from_log("opensmtpd", EXIM_VALID, "1xY94h-00000c-12") is None
    assert hop_tls_from_log("sendmail", POSTFIX_INTERLEAVED, "A599227E455") is None


def test_json_round_trip_and_final() -> None:
    facts = hop_tls_from_log("postfix", POSTFIX_VERIFY_EXPIRED, "AE01227E5C2")
    assert facts is not None and facts.final
    assert HopTlsLog.from_json(facts.to_json()) == facts
    assert facts.trust in TRUST_LEVELS and facts.outcome in OUTCOMES


# --- the phrases the compatibility doc shows (harness.report.matrix) ---------------------------------
# Lines of the bundled MTA-STS scenario 33 (mx with a wrong-name certificate, the policy enforced), as
# HopTlsLog.line held them on 2026-12-01.
EVIDENCE_CASES = [
    ("Dec 01 02:58:11 relay postfix/smtp[145]: server certificate verification failed for "
     "mx.example.test[172.30.254.10]:25: num=62:hostname mismatch\n"
     "Dec 01 02:58:11 relay postfix/smtp[145]: Untrusted TLS connection established to "
     "mx.example.test[172.30.254.10]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) "
     "key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256\n"
     "Dec 01 02:58:11 relay postfix/smtp[145]: 07FEC2CE719: to=<bob@example.test>, "
     "relay=mx.example.test[172.30.254.10]:25, delay=0.14, delays=0.03/0.03/0.08/0, dsn=4.7.5, "
     "status=deferred (Server certificate not verified)",
     ["num=62:hostname mismatch", "Untrusted TLS connection established",
      "status=deferred (Server certificate not verified)"]),
    ("2026-12-01 02:58:10.390 1xYE4I-00000i-0P => bob@example.test P=<alice@origin.test> R=dnslookup "
     "T=remote_smtp S=547 H=mx.example.test [172.28.171.10]:25 "
     "X=TLS1.3:ECDHE_SECP256R1__RSA_PSS_RSAE_SHA256__AES_256_GCM:256 CV=no "
     'C="250 2.0.0 Ok: queued as 5570B2CE77A" QT=0.260s DT=0.130s',
     ["CV=no"]),
    ("5bd48bb811f87026 mta tls ciphers=TLSv1.3:TLS_AES_256_GCM_SHA384:256\n"
     "5bd48bb811f87026 mta ssl_check_name: no match for 'mx.example.test' in cert\n"
     '5bd48bb811f87026 mta server-cert-check result="failure"\n'
     "5bd48bb811f87026 mta delivery evpid=9e37a25401b3c794 from=<alice@origin.test> to=<bob@example.test> "
     'rcpt=<-> source="172.30.96.11" relay="172.30.96.10 (172.30.96.10)" delay=0s result="Ok" '
     'stat="250 2.0.0 Ok: queued as CFCCB2CEBDB"',
     ["ssl_check_name: no match for 'mx.example.test' in cert", 'server-cert-check result="failure"']),
    # Kept for want of TLS: the reason, with the run's addresses dropped (they differ every run).
    ("Dec 01 02:56:47 relay postfix/smtp[123]: A59222CE60A: to=<bob@example.test>, "
     "relay=mx.example.test[172.31.51.10]:25, delay=0.11, delays=0.07/0.04/0/0, dsn=4.7.4, "
     "status=deferred (TLS is required, but was not offered by host mx.example.test[172.31.51.10])",
     ["status=deferred (TLS is required, but was not offered by host mx.example.test)"]),
    ("2026-12-01 02:57:52.109 1xYE3z-00000i-36 == bob@example.test R=dnslookup T=remote_smtp defer (-37) "
     "H=mx.example.test [172.31.116.10]:25 DT=0.021s: TLS session: (certificate verification failed): "
     "Verification failed. The certificate differs.",
     ["TLS session: (certificate verification failed): Verification failed. The certificate differs."]),
    ('0000000000000000 mta delivery evpid=442426f6ea5c3f26 from=<alice@origin.test> to=<bob@example.test> '
     'rcpt=<-> source="-" relay="example.test" delay=2s result="TempFail" stat="Network error on destination MXs"',
     ["Network error on destination MXs"]),
]


@pytest.mark.parametrize(("line", "phrases"), EVIDENCE_CASES)
def test_evidence_is_the_trust_the_complaint_and_the_reason_without_run_details(line: str,
                                                                                phrases: list[str]) -> None:
    assert tls_log_evidence(line) == phrases


# --- DANE: how the certificate matched ----------------------------------------------------------------
# Postfix relays with smtp_tls_loglevel = "1, certmatch" (as the harness configures them), 2026-12-01:
# outbound dane to an mx whose TLSA record matches, and outbound verify (the run's CA and the name).
POSTFIX_DANE = (
    'Dec 01 03:01:27 relay postfix/qmgr[38]: C2EBD2CE354: from=<alice@origin.test>, size=506, nrcpt=1 '
        '(queue active)',
    'Dec 01 03:01:27 relay postfix/smtp[123]: mx.example.test[172.29.248.10]:25: Matched DANE EE certificate '
        'at depth 0: 3 1 1 6FD1C8D9EBAA5DF53A17E4B46B24072A5600542E0B88A55FAEDD76F3514DF58C',
    'Dec 01 03:01:27 relay postfix/smtp[123]: mx.example.test[172.29.248.10]:25: subject_CN=mx.example.test, '
        'issuer_CN=mailflow-harness run 20261201-030118-8f5e95 CA, fingerprint=4F:A5:72:AF, pkey_fingerprint=6F:D1',
    'Dec 01 03:01:27 relay postfix/smtp[123]: Verified TLS connection established to '
        'mx.example.test[172.29.248.10]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) '
        'key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256',
    'Dec 01 03:01:27 relay postfix/smtp[123]: C2EBD2CE354: to=<bob@example.test>, '
        'relay=mx.example.test[172.29.248.10]:25, delay=0.08, delays=0.02/0.03/0.01/0.03, dsn=2.0.0, '
        'status=sent (250 2.0.0 Ok: queued as D21BD2CE397)',
)
POSTFIX_CA_MATCH = (
    'Dec 01 03:01:26 relay postfix/smtp[121]: mx.example.test[172.28.59.10]:25: matched peername: '
        'mx.example.test',
    'Dec 01 03:01:26 relay postfix/smtp[121]: Verified TLS connection established to '
        'mx.example.test[172.28.59.10]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) '
        'key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256',
    'Dec 01 03:01:26 relay postfix/smtp[121]: 699CF2CE236: to=<bob@example.test>, '
        'relay=mx.example.test[172.28.59.10]:25, delay=0.13, delays=0.02/0.08/0.01/0.02, dsn=2.0.0, '
        'status=sent (250 2.0.0 Ok: queued as 8565E2CE275)',
)
# Exim relay, outbound dane, the TLSA record matching (bundled scenario 31, 2026-12-01).
EXIM_DANE = (
    '2026-12-01 02:57:35.988 1xYE3j-00000h-0b => bob@example.test P=<alice@origin.test> R=dnslookup '
        'T=remote_smtp S=543 H=mx.example.test [172.31.42.10]:25 '
        'X=TLS1.3:ECDHE_SECP256R1__RSA_PSS_RSAE_SHA256__AES_256_GCM:256 CV=dane C="250 2.0.0 Ok: queued as '
        'B1C602CE206"',
)


def test_postfix_a_dane_match_is_dane_and_a_name_match_is_not() -> None:
    dane = hop_tls_from_log("postfix", POSTFIX_DANE, "C2EBD2CE354")
    assert dane is not None and (dane.trust, dane.dane, dane.outcome) == ("verified", True, "sent")
    assert "Matched DANE EE certificate" in dane.line
    ca = hop_tls_from_log("postfix", POSTFIX_CA_MATCH, "699CF2CE236")
    assert ca is not None and (ca.trust, ca.dane) == ("verified", False)


def test_postfix_verified_without_certmatch_lines_cannot_say() -> None:
    # smtp_tls_loglevel = 1 (a configuration of the user's own): "Verified" alone is DANE or the CA.
    facts = hop_tls_from_log("postfix", POSTFIX_DANE[:1] + POSTFIX_DANE[3:], "C2EBD2CE354")
    assert facts is not None and (facts.trust, facts.dane) == ("verified", None)
    # Not verified at all is never DANE.
    unverified = hop_tls_from_log("postfix", POSTFIX_VERIFY_EXPIRED, "AE01227E5C2")
    assert unverified is not None and unverified.dane is False


def test_exim_cv_dane_is_dane_and_opensmtpd_never_is() -> None:
    dane = hop_tls_from_log("exim", EXIM_DANE, "1xYE3j-00000h-0b")
    assert dane is not None and (dane.trust, dane.dane) == ("verified", True)
    yes = hop_tls_from_log("exim", EXIM_VALID, "1xY94h-00000c-12")
    assert yes is not None and (yes.trust, yes.dane) == ("verified", False)
    for lines, queue_id in ((OPENSMTPD_WRONG_NAME, "9c95140c"), (OPENSMTPD_CLEAR, "44482032")):
        facts = hop_tls_from_log("opensmtpd", lines, queue_id)
        assert facts is not None and facts.dane is False


def test_dane_survives_json_and_old_records_say_unknown() -> None:
    dane = hop_tls_from_log("postfix", POSTFIX_DANE, "C2EBD2CE354")
    assert dane is not None and HopTlsLog.from_json(dane.to_json()) == dane
    old = {k: v for k, v in dane.to_json().items() if k != "dane"}
    assert HopTlsLog.from_json(old).dane is None
