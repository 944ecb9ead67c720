import unittest

import policy


class PolicyTest(unittest.TestCase):
    def test_configuration_errors_point_at_the_field(self):
        for text, pointer in [
            ('{"client_ips": ["10.0.0.0/33"]}', "/client_ips/0"),
            ('{"paths": ["admin"]}', "/paths/0"),
            ('{"status": 500}', "/status"),
            ('{"colour": "red"}', "/colour"),
            ("nope", ""),
        ]:
            with self.assertRaises(policy.ConfigError) as refused:
                policy.parse_config(text)
            self.assertEqual(refused.exception.pointer, pointer, text)

    def test_each_rule(self):
        rules = policy.parse_config(
            '{"methods": ["trace"], "paths": ["/admin/"], "client_ips": ["10.0.0.0/8", "2001:db8::/32"], "user_agents": ["SQLMap"]}'
        )
        deny = lambda m="GET", p="/", ip="127.0.0.1", ua=None: policy.denial(rules, m, p, ip, ua)
        self.assertIsNone(deny())
        self.assertEqual(deny(m="TRACE"), "method")
        self.assertEqual(deny(p="/admin"), "path")
        self.assertEqual(deny(p="/admin/users"), "path")
        self.assertIsNone(deny(p="/administrator"))
        self.assertEqual(deny(ip="10.1.2.3"), "client-ip")
        self.assertEqual(deny(ip="2001:db8::1"), "client-ip")
        self.assertEqual(deny(ua="sqlmap/1.7"), "user-agent")

    def test_problem_document(self):
        rules = policy.parse_config('{"status": 404}')
        self.assertIn(b'"status": 404', policy.problem(rules, "path"))


if __name__ == "__main__":
    unittest.main()
